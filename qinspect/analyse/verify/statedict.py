"""Inputs for ``verify`` from the checkpoint alone: the user's input, an assumed chain,
or synthetic inputs.

A state_dict stores no graph. The first layer gets the user's ``--input``, quantized with
the QuantStub's qparams. After that, each Linear (static or dynamic) and LSTM layer whose
input size equals the size of the previous layer's output runs on that output: a
*chain*, which assumes nothing runs between the layers (a ReLU, pooling or reshape in the
real model would change the numbers) and is labelled so. Where shapes do not connect,
and for convolutions (stride and padding are not stored) after the first layer, the
layer runs in isolation on synthetic inputs drawn from its input range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qinspect.analyse.verify import rows as V
from qinspect.analyse.verify import types as T
from qinspect.analyse.verify.rows import Call, Context
from qinspect.analyse.verify.types import InputKind, LayerVerify
from qinspect.errors import InputError, VerifyError
from qinspect.inputs import UserInput, shape_text
from qinspect.model import ActQuant, Checkpoint, Layer, Mode, OpKind, RnnCell

SYNTH_BATCH = 8
SYNTH_SEQ = 5
SYNTH_SPATIAL = {1: 64, 2: 16, 3: 8}
CONV_ASSUMED = ("conv hyper-parameters are not stored in a state_dict: assumed stride 1, "
                "padding 0, dilation 1, groups 1 (pass --model to use the model's)")
CHAIN_ASSUMPTION = ("each layer runs on the previous layer's output (its integers, for a "
                    "static layer), assuming nothing runs between them (a state_dict stores "
                    "no graph: a ReLU, "
                    "pooling or reshape in the real model changes the numbers); "
                    "--model FILE.py:NAME runs the real model")


@dataclass
class Flow:
    """The tensor flowing to the next layer."""

    producer: str
    values: np.ndarray
    """Integers (``quantized``) or floats."""
    quantized: bool
    scale: float = 1.0
    zero_point: int = 0
    real: np.ndarray | None = None
    """The user's float values behind a QuantStub's output."""
    from_user: bool = False
    synthetic: bool = False
    """Computed from synthetic input: whatever it feeds is synthetic too."""


def kind_of(layer: Layer) -> str:
    """How verify handles a layer: stub, linear, conv, add, dynamic, lstm, gate, or other."""
    w = layer.weight
    quantized_w = w if w is not None and w.is_quantized else None
    if layer.mode is Mode.QUANTIZE:
        return "stub"
    module_linear = layer.op is OpKind.LINEAR and not layer.functional
    if layer.mode is Mode.STATIC:
        if layer.op is OpKind.FUNCTIONAL:
            return "add"
        if quantized_w and module_linear:
            return "linear"
        if quantized_w and layer.op in (OpKind.CONV, OpKind.CONV_TRANSPOSE) \
                and not layer.functional and len(quantized_w.shape) in (3, 4, 5):
            return "conv"
        return "other"
    if layer.mode is Mode.DYNAMIC:
        if module_linear:
            return "dynamic"
        if layer.rnn is not None:
            return "lstm" if layer.rnn.cell is RnnCell.LSTM else "gate"
    return "other"


def unsupported_reason(layer: Layer) -> str:
    if layer.op is OpKind.CONV_TRANSPOSE:
        return "ConvTranspose is not covered by verify yet"
    if layer.mode is Mode.WEIGHT_ONLY:
        return "weight-only: a lookup of dequantized rows, nothing to requantize"
    return f"{layer.kind} is not covered by verify yet (its output qparams: qinspect show)"


def run(ckpt: Checkpoint, ctx: Context, user: UserInput | None) -> T.VerifyReport:
    layers = [lay for lay in ckpt.layers if lay.mode in (Mode.STATIC, Mode.DYNAMIC,
                                                         Mode.QUANTIZE, Mode.WEIGHT_ONLY)
              or (lay.mode is Mode.FLOAT and lay.weight is not None)]
    rows: list[LayerVerify] = []
    flow: Flow | None = None
    arrays = list(user.arrays) if user is not None else []
    first_consumer_done = user is None
    done_gates: set[str] = set()
    total = len(layers)
    for i, layer in enumerate(layers):
        ctx.tick(layer.name, i, total)
        if layer.name in done_gates:
            continue
        if layer.mode is Mode.FLOAT:  # a float layer runs here: the chain cannot go on
            flow = None
            continue
        how = kind_of(layer)
        if how == "stub":
            out = layer.output
            bad = V.unusable_qparams(layer) if out is not None else "no output qparams"
            if out is None or bad is not None:
                rows.append(V.not_verified(layer, f"{bad}: torch cannot run it"))
                if arrays and (flow is None or flow.from_user):
                    arrays.pop(0)  # the input this stub would have quantized
                flow = None
                continue
            if arrays and (flow is None or flow.from_user):
                x = arrays.pop(0)
                text = f"user input {shape_text(x.shape)}"
                row, q = V.quantize_row(ctx, layer, x.astype(np.float32), InputKind.USER, text)
                flow = Flow(layer.name, q, True, out.scale, out.zero_point,
                            real=x.astype(np.float32), from_user=True)
            else:
                x = _uniform(ctx, out, (_batch(ctx), SYNTH_BATCH * 8))
                row, _ = V.quantize_row(ctx, layer, x, InputKind.SYNTHETIC,
                                        "isolated, synthetic input (uniform over its range)")
                flow = None
            rows.append(row)
            continue
        if not first_consumer_done and how in ("linear", "conv", "dynamic", "lstm", "gate"):
            if flow is None and arrays:
                flow = Flow("input", arrays.pop(0), False, from_user=True)
            if flow is not None and flow.from_user:
                _check_first_fits(layer, how, flow, ckpt, user)
                if flow.values.ndim == 1:  # one unbatched sample, as nn.Linear accepts
                    flow.values = flow.values[None]
                    flow.real = None if flow.real is None else flow.real[None]
            first_consumer_done = True
        try:
            if how == "lstm" and layer.rnn is not None and layer.rnn.input_side:
                hh = _sibling(layers, layer)
                if hh is None:
                    rows.append(V.not_verified(layer, "its hidden-to-hidden gates (weight_hh) are "
                                                      "missing from the file"))
                    flow = None
                    continue
                new_rows, flow = _lstm(ctx, layer, hh, flow)
                rows.extend(new_rows)
                done_gates.add(hh.name)
                continue
            row, flow = _one(ctx, layer, how, flow)
        except VerifyError as exc:  # torch refused the layer: say so, go on with the rest
            row, flow = V.not_verified(layer, str(exc).removeprefix(f"{layer.name}: ")), None
        rows.append(row)
    ctx.tick("done", total, total)
    text = user.describe() if user is not None else "none: every layer runs on synthetic input"
    names = _chain_names(rows)
    output = None
    if flow is not None and flow.producer in names:
        output = _chain_output(flow)
    return T.VerifyReport(
        path=ckpt.path, mode="file", engine=ctx.engine, engine_reason="", input_text=text,
        layers=tuple(rows), chain=names,
        chain_note=CHAIN_ASSUMPTION if len(names) > 1 else None, chain_output=output)


def _one(ctx: Context, layer: Layer, how: str, flow: Flow | None
         ) -> tuple[LayerVerify, Flow | None]:
    bad = V.unusable_qparams(layer) or _unusable_input(layer) if how in (
        "linear", "conv", "add") else None
    if bad is not None:
        return V.not_verified(layer, f"{bad}: torch cannot run it"), None
    if how == "linear":
        return _linear(ctx, layer, flow)
    if how == "conv":
        return _conv(ctx, layer, flow)
    if how == "add":
        return _add(ctx, layer), None
    if how == "dynamic":
        return _dynamic(ctx, layer, flow)
    if how in ("gate", "lstm"):
        return _gate_isolated(ctx, layer), None
    return V.not_verified(layer, unsupported_reason(layer)), None


def _unusable_input(layer: Layer) -> str | None:
    """The input qparams a static layer inherits, when torch cannot quantize with them."""
    inp = layer.input
    if inp is None:
        return None
    if not (np.isfinite(inp.scale) and inp.scale > 0):
        return f"input scale {inp.scale:g} (from its producer) is not a positive finite number"
    if not 0 <= inp.zero_point <= 255:
        return f"input zero point {inp.zero_point} (from its producer) is outside quint8's range"
    return None


def _chain_names(rows: list[LayerVerify]) -> tuple[str, ...]:
    """Layers of the assumed chain: every chained layer and the layer feeding the first."""
    names: list[str] = []
    for i, r in enumerate(rows):
        if r.input_kind is InputKind.CHAINED:
            if not names and i > 0 and rows[i - 1].verified:
                names.append(rows[i - 1].name)
            names.append(r.name)
    return tuple(dict.fromkeys(names))


def _chain_output(flow: Flow) -> T.ChainOutput:
    if flow.quantized:
        from qinspect.quant.affine import dequantize_per_tensor

        values = dequantize_per_tensor(flow.values, flow.scale, flow.zero_point)
        return T.ChainOutput(flow.producer, values, flow.values, flow.scale, flow.zero_point)
    return T.ChainOutput(flow.producer, np.asarray(flow.values, np.float32))


def _batch(ctx: Context) -> int:
    return ctx.batch or SYNTH_BATCH


def _weight_shape(layer: Layer) -> tuple[int, ...]:
    """The shape of a layer's weight; a layer the file gives none is not verified."""
    if layer.weight is None:
        raise VerifyError(f"{layer.name}: the file holds no weight for it")
    return layer.weight.shape


# --- first layer ----------------------------------------------------------------------


def _expected(w: tuple[int, ...], how: str) -> str:
    """The input shapes a first layer of weight shape ``w`` accepts."""
    if how in ("linear", "dynamic"):
        return f"(N, {w[1]}) or (..., {w[1]})"
    if how == "conv":
        axes = "DHW"[-(len(w) - 2):]
        sizes = ", ".join(f"{a} >= {k}" for a, k in zip(axes, w[2:], strict=True))
        return f"(N, {w[1]}, {', '.join(axes)}) with {sizes}"
    return f"(seq, batch, {w[1]})"


def _check_first_fits(layer: Layer, how: str, flow: Flow, ckpt: Checkpoint,
                      user: UserInput | None) -> None:
    if layer.weight is None:  # nothing to check against (the layer is not verified)
        return
    shape = tuple(flow.values.shape)
    w = layer.weight.shape
    fits = True
    if how in ("linear", "dynamic"):
        fits = len(shape) >= 1 and shape[-1] == w[1]
    elif how == "conv":
        nd = len(w) - 2
        fits = (len(shape) == nd + 2 and shape[1] == w[1]
                and all(s >= k for s, k in zip(shape[2:], w[2:], strict=True)))
    elif how in ("lstm", "gate"):
        fits = len(shape) in (2, 3) and shape[-1] == w[1]
    if not fits:
        where = user.path if user is not None else "--input"
        what = f"{layer.kind} {w[1]} -> {w[0]}" if how != "conv" else \
            f"{layer.kind} with weight {shape_text(w)}"
        raise InputError(
            f"{where}: input shape {shape_text(shape)} does not fit the first quantized layer "
            f"'{layer.name}' ({what}), which expects {_expected(w, how)}; pass an input of "
            "that shape (--batch limits only the first axis)")


# --- static layers --------------------------------------------------------------------------


def _input_qparams(layer: Layer) -> tuple[float, int, str]:
    if layer.input is not None:
        src = layer.input_source.layer if layer.input_source is not None else None
        return layer.input.scale, layer.input.zero_point, f"input qparams of {src!r}" if src \
            else "input qparams"
    assert layer.output is not None
    return layer.output.scale, layer.output.zero_point, \
        "input qparams unknown: the layer's own output qparams used"


def _uniform(ctx: Context, act: ActQuant, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (T.QMIN - act.zero_point) * act.scale, (T.QMAX - act.zero_point) * act.scale
    return ctx.rng.uniform(lo, hi, size=shape).astype(np.float32)


def _synthetic_call(ctx: Context, layer: Layer, shape: tuple[int, ...]) -> tuple[Call, str]:
    from qinspect.quant.affine import quantize_per_tensor

    scale, zp, source = _input_qparams(layer)
    lo, hi = (T.QMIN - zp) * scale, (T.QMAX - zp) * scale
    x = ctx.rng.uniform(lo, hi, size=shape).astype(np.float32)
    q = quantize_per_tensor(x, scale, zp, T.ACT_DTYPE)
    return Call(q, scale, zp), (f"isolated, synthetic input {shape_text(shape)} uniform over "
                                f"[{lo:.4g}, {hi:.4g}] ({source})")


def _linear(ctx: Context, layer: Layer, flow: Flow | None
            ) -> tuple[LayerVerify, Flow | None]:
    k = _weight_shape(layer)[1]
    if flow is not None and flow.quantized and flow.values.shape[-1] == k:
        call = Call(flow.values, flow.scale, flow.zero_point, flow.real)
        if flow.from_user:
            kind, text = InputKind.USER, (f"user input {shape_text(flow.values.shape)}, "
                                          f"quantized by '{flow.producer}'")
        elif flow.synthetic:
            kind, text = InputKind.SYNTHETIC, (f"the integer output of '{flow.producer}', "
                                               "itself run on synthetic input")
        else:
            kind, text = InputKind.CHAINED, f"chained: the integer output of '{flow.producer}'"
    else:
        call, text = _synthetic_call(ctx, layer, (_batch(ctx), k))
        kind = InputKind.SYNTHETIC
    row, outs = V.static_row(ctx, layer, [call], kind, text)
    out = layer.output
    # Not verified (e.g. qparams torch cannot run): the chain stops here.
    if not outs or out is None:
        return row, None
    return row, Flow(layer.name, outs[0], True, out.scale, out.zero_point,
                     synthetic=kind is InputKind.SYNTHETIC)


def _conv(ctx: Context, layer: Layer, flow: Flow | None) -> tuple[LayerVerify, None]:
    w = _weight_shape(layer)
    nd = len(w) - 2
    if flow is not None and flow.quantized and flow.from_user and flow.values.ndim == nd + 2 \
            and flow.values.shape[1] == w[1]:
        call = Call(flow.values, flow.scale, flow.zero_point, flow.real)
        kind = InputKind.USER
        text = f"user input {shape_text(flow.values.shape)}, quantized by '{flow.producer}'"
    else:
        size = max(SYNTH_SPATIAL[nd], *(2 * k for k in w[2:]))
        call, text = _synthetic_call(ctx, layer, (ctx.batch or 2, w[1]) + (size,) * nd)
        kind = InputKind.SYNTHETIC
    row, _ = V.static_row(ctx, layer, [call], kind, text, notes=(CONV_ASSUMED,))
    return row, None


ADD_INPUT_SCALES = (0.7, 0.45)
"""Synthetic add inputs: their scales as fractions of the output scale (so the sum needs
rounding; with the output's own scale it would be exact and test nothing)."""


def _add(ctx: Context, layer: Layer) -> LayerVerify:
    from qinspect.quant.affine import quantize_per_tensor

    out = layer.output
    if out is None:
        return V.not_verified(layer, "no output qparams")
    lo, hi = (T.QMIN - out.zero_point) * out.scale, (T.QMAX - out.zero_point) * out.scale
    shape = (_batch(ctx), 256)
    calls = []
    for fraction in ADD_INPUT_SCALES:
        scale = out.scale * fraction
        x = ctx.rng.uniform(lo / 2, hi / 2, size=shape).astype(np.float32)
        calls.append(Call(quantize_per_tensor(x, scale, out.zero_point, T.ACT_DTYPE), scale,
                          out.zero_point))
    text = (f"isolated, synthetic inputs {shape_text(shape)} uniform over half its output "
            f"range [{lo / 2:.4g}, {hi / 2:.4g}]")
    notes = ("the op and its input qparams are not stored in a state_dict: add assumed, the "
             "inputs quantized with 0.7x and 0.45x its output scale and its zero point "
             "(--model finds the real ones)",)
    row, _ = V.add_row(ctx, layer, [(calls[0], calls[1])], False, InputKind.SYNTHETIC, text,
                       notes)
    return row


# --- dynamic layers -----------------------------------------------------------------------


def _float_flow(flow: Flow | None) -> np.ndarray | None:
    if flow is None:
        return None
    if flow.quantized:
        return V.dequant(flow.values, flow.scale, flow.zero_point).astype(np.float32)
    return np.asarray(flow.values, np.float32)


def _dynamic(ctx: Context, layer: Layer, flow: Flow | None) -> tuple[LayerVerify, Flow | None]:
    k = _weight_shape(layer)[1]
    x = _float_flow(flow)
    if flow is not None and x is not None and x.shape[-1] == k:
        if flow.from_user:
            kind, text = InputKind.USER, f"user input {shape_text(x.shape)}"
        elif flow.synthetic:
            kind, text = InputKind.SYNTHETIC, (f"the output of '{flow.producer}', itself run "
                                               "on synthetic input")
        else:
            kind, text = InputKind.CHAINED, f"chained: the output of '{flow.producer}'"
    else:
        x = ctx.rng.standard_normal((_batch(ctx), k)).astype(np.float32)
        kind = InputKind.SYNTHETIC
        text = f"isolated, synthetic input {shape_text(x.shape)} ~ N(0, 1)"
    row, outs = V.dynamic_row(ctx, layer, [x], kind, text)
    if not row.verified:
        return row, None
    return row, Flow(layer.name, outs[0], False, synthetic=kind is InputKind.SYNTHETIC)


def _sibling(layers: list[Layer], ih: Layer) -> Layer | None:
    name = ih.name.replace("weight_ih_", "weight_hh_")
    return next((lay for lay in layers if lay.name == name), None)


def _lstm(ctx: Context, ih: Layer, hh: Layer, flow: Flow | None
          ) -> tuple[list[LayerVerify], Flow | None]:
    from qinspect.analyse.verify import kernels as K

    w_ih, w_hh = _weight_shape(ih), _weight_shape(hh)
    in_size, hidden = w_ih[1], w_hh[1]
    if w_ih[0] != 4 * hidden or w_hh[0] != 4 * hidden:
        return [V.not_verified(ih, "gate shapes are not an LSTM's (4 x hidden rows)"),
                V.not_verified(hh, "gate shapes are not an LSTM's (4 x hidden rows)")], None
    x = _float_flow(flow)
    if x is not None and x.ndim == 2:
        x = x[:, None, :]
    if flow is not None and x is not None and x.ndim == 3 and x.shape[-1] == in_size:
        kind = InputKind.USER if flow.from_user else \
            InputKind.SYNTHETIC if flow.synthetic else InputKind.CHAINED
        text = (f"user input {shape_text(x.shape)} (seq, batch, features)" if flow.from_user
                else f"chained: the hidden states of '{flow.producer}'")
    else:
        x = ctx.rng.standard_normal((SYNTH_SEQ, ctx.batch or 2, in_size)).astype(np.float32)
        kind, text = InputKind.SYNTHETIC, (f"isolated, synthetic sequence {shape_text(x.shape)}"
                                           " ~ N(0, 1)")
    k_ih = K.DynamicLinearKernel(ih, ctx.engine)
    k_hh = K.DynamicLinearKernel(hh, ctx.engine)
    hs, prev = K.lstm_sequence(x, k_ih, k_hh, hidden)
    steps, batch = x.shape[0], x.shape[1]
    row_ih, _ = V.dynamic_row(ctx, ih, [x.reshape(steps * batch, in_size)], kind,
                              text + "; the whole sequence at once, as torch's LSTM does")
    hh_kind = kind if kind is InputKind.SYNTHETIC else InputKind.CHAINED
    row_hh, _ = V.dynamic_row(
        ctx, hh, list(prev), hh_kind,
        f"the previous hidden state at each of {steps} steps (h_0 = 0), from the LSTM "
        "recurrence run with torch's kernels", notes=(
            "LSTM cell arithmetic (sigmoid, tanh, c and h updates) runs in torch float32 "
            "between the gate layers; one dynamic quantization per step",))
    out_kind = kind if kind is not InputKind.SYNTHETIC else None
    new_flow = Flow(hh.name, hs, False) if out_kind is not None else None
    return [row_ih, row_hh], new_flow


def _gate_isolated(ctx: Context, layer: Layer) -> LayerVerify:
    k = _weight_shape(layer)[1]
    if layer.rnn is not None and not layer.rnn.input_side:
        x = ctx.rng.uniform(-1, 1, size=(_batch(ctx), k)).astype(np.float32)
        text = f"isolated, synthetic hidden state {shape_text(x.shape)} uniform over [-1, 1]"
    else:
        x = ctx.rng.standard_normal((_batch(ctx), k)).astype(np.float32)
        text = f"isolated, synthetic input {shape_text(x.shape)} ~ N(0, 1)"
    row, _ = V.dynamic_row(ctx, layer, [x], InputKind.SYNTHETIC, text, notes=(
        f"{layer.kind}: the recurrence is run for LSTMs only; this gate runs alone",))
    return row


# --- the runner ---------------------------------------------------------------------------

NO_GRAPH = ("a state_dict stores no graph: only each layer's arithmetic was checked (torch's "
            "kernel against qinspect's integer reference), {inputs}; for real per-layer "
            "errors pass --model FILE.py:NAME (or verify a TorchScript or .pt2 file, which "
            "stores its graph)")


class StateDictRunner:
    """A state_dict (eager or FX) without ``--model``: the file alone, no graph."""

    name = "state_dict"
    needs: dict[str, str] = {}
    refuses: dict[str, str] = {}

    def accepts(self, ckpt: Checkpoint, options: T.Options) -> bool:
        return True  # the last runner: whatever the others leave

    def run(self, ckpt: Checkpoint, options: T.Options, progress: T.Progress | None
            ) -> T.VerifyReport:
        from dataclasses import replace

        from qinspect.inputs import read_input

        V.check_stage(ckpt)
        user = read_input(options.input).limited(options.batch) \
            if options.input is not None else None
        ctx = Context.make(ckpt, options, progress)
        report = run(ckpt, ctx, user)
        inputs = ("on synthetic input" if user is None else
                  "on the --input for the first layer and assumed-chain or synthetic "
                  "inputs after it")
        return replace(report, engine_reason=ctx.engine_reason,
                       float_domain=ctx.weights.summary, scope=NO_GRAPH.format(inputs=inputs))
