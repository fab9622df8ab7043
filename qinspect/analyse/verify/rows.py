"""What every runner shares to build rows: the context, the float-domain weights, the
engine choice, and one row builder per op kind (static Linear/Conv, quantize, add, dynamic).

For each quantized op, from its quantized input ``x_q``:

1. **float domain**: the op in float64 on the dequantized input, with the dequantized
   weight (or the float reference weight, folded where BatchNorm was fused) and the float
   bias, no output rounding: what the layer means;
2. **kernel**: the PyTorch quantized op the checkpoint is built for, under the engine the
   file implies (:mod:`qinspect.analyse.verify.kernels`);
3. **reference**: qinspect's own integer arithmetic (:mod:`qinspect.quant.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from qinspect.analyse.verify.types import (
    ACT_DTYPE,
    CLIP_MARGIN_LSB,
    QMAX,
    QMIN,
    InputKind,
    KernelAgreement,
    LayerVerify,
    Options,
    Progress,
)
from qinspect.errors import InputError, VerifyError
from qinspect.model import Checkpoint, Layer, Mode, Weight

if TYPE_CHECKING:
    from qinspect.analyse.pairing import Pair
    from qinspect.analyse.verify.kernels import (
        ConvGeometry,
        ConvKernel,
        DynamicLinearKernel,
        LinearKernel,
    )


def check_stage(ckpt: Checkpoint) -> None:
    if ckpt.stage.prepared:
        raise VerifyError(f"{ckpt.path}: a {ckpt.stage.value} checkpoint holds float weights and "
                          "observers, nothing quantized to run yet; convert it "
                          "(torch.ao.quantization.convert) and verify the converted file")
    if not any(lay.mode in (Mode.STATIC, Mode.DYNAMIC, Mode.QUANTIZE) for lay in ckpt.layers):
        raise VerifyError(f"{ckpt.path}: no quantized layer to verify (stage {ckpt.stage.value}); "
                          "pass a converted quantized checkpoint")


def choose_engine(ckpt: Checkpoint, override: str | None) -> tuple[str, str]:
    """The engine the file implies (or ``override``), and why."""
    from qinspect.analyse.verify import kernels

    available = kernels.available_engines()
    if override is not None:
        if override not in kernels.ENGINES:
            raise InputError(f"--engine {override!r}: choose one of {', '.join(kernels.ENGINES)}")
        if override not in available:
            raise InputError(f"--engine {override}: this torch build does not have it "
                             f"(available: {', '.join(available)})")
        return override, "chosen with --engine"
    static = [lay.weight.quant for lay in ckpt.layers
              if lay.mode is Mode.STATIC and lay.weight is not None and lay.weight.is_quantized
              and lay.weight.quant is not None]
    if any(q.axis is not None for q in static):
        engine, why = "x86", ("per-channel weights: the fbgemm/x86 default qconfigs (they "
                              "write identical files); x86 is torch's default engine")
        if engine not in available:
            engine = "fbgemm"
    elif static:
        engine, why = "qnnpack", ("per-tensor static weights: the qnnpack default qconfig "
                                  "(for a per-tensor qconfig on x86, pass --engine x86)")
    else:
        engine = kernels.default_engine()
        why = "the file does not imply an engine (dynamic layers only): torch's default here"
    if engine not in available:
        fallback = available[0] if available else engine
        why += f"; {engine} is not in this torch build, so {fallback}"
        engine = fallback
    return engine, why



# --- float weights ----------------------------------------------------------------------


class FloatWeights:
    """The weights of the float domain: dequantized, or the float reference's (folded)."""

    def __init__(self, ckpt: Checkpoint, reference: Checkpoint | None) -> None:
        self.reference = reference
        self.pairs: dict[str, Pair] = {}
        if reference is not None:
            from qinspect.analyse.pairing import pair_layers

            pairing = pair_layers(ckpt, reference)
            self.pairs = {p.a.name: p for p in pairing.pairs}

    @property
    def summary(self) -> str:
        if self.reference is None:
            return ("dequantized weights (no --reference): the SQNR measures activation "
                    "quantization only, not weight error")
        return (f"float weights of {self.reference.path} (BatchNorm folded where the "
                "checkpoint fused it): the SQNR includes weight error")

    def get(self, layer: Layer) -> tuple[np.ndarray, np.ndarray | None, str, tuple[str, ...]]:
        """(weight f64, bias f64 or None, description, notes) for the float domain of a
        layer with a weight."""
        assert layer.weight is not None, "the float domain of a layer without a weight"
        deq = dequantized(layer.weight)
        bias = None if layer.bias is None else np.asarray(layer.bias, np.float64)
        if self.reference is None:
            return deq, bias, "dequantized weights", ()
        pair = self.pairs.get(layer.name)
        if pair is None or pair.b.weight is None:
            return deq, bias, "dequantized weights", (
                f"no layer pairs with it in {self.reference.path}: dequantized weights used",)
        w = np.asarray(pair.b.weight.values, np.float32)
        b = None if pair.b.bias is None else np.asarray(pair.b.bias, np.float32)
        notes: tuple[str, ...] = ()
        how = f"float weights of '{pair.b.name}'"
        if pair.fold is not None and pair.fold_side == "b":
            from qinspect.analyse.fold import fold_batchnorm, infer_eps

            choice = infer_eps(w, b, pair.fold, layer.bias)
            w, b = fold_batchnorm(w, b, pair.fold, choice.eps)
            how += f" with BatchNorm '{pair.fold.name}' folded (eps {choice.eps:g})"
            if not choice.matched:
                notes = (choice.message,)
        if tuple(w.shape) != tuple(deq.shape):
            return deq, bias, "dequantized weights", (
                f"reference weight {tuple(w.shape)} does not match {tuple(deq.shape)}: "
                "dequantized weights used",)
        return (w.astype(np.float64), None if b is None else b.astype(np.float64), how, notes)


def dequantized(w: Weight) -> np.ndarray:
    """The real values of a quantized weight, ``(q - zp) * scale``, in float64."""
    if w.quant is None or not w.is_quantized:
        return np.asarray(w.values, np.float64)
    q = w.quant
    vals = np.asarray(w.values, np.float64)
    if q.axis is None:
        return (vals - float(q.zero_point[0])) * float(q.scale[0])
    shape = [1] * vals.ndim
    shape[q.axis] = -1
    return (vals - np.asarray(q.zero_point, np.float64).reshape(shape)) \
        * np.asarray(q.scale, np.float64).reshape(shape)


# --- context and rows ---------------------------------------------------------------------


@dataclass
class Context:
    """What every row computation needs."""

    engine: str
    weights: FloatWeights
    seed: int
    batch: int | None
    rng: np.random.Generator
    progress: Progress | None = None
    cache: dict[str, LinearKernel | ConvKernel | DynamicLinearKernel] = field(
        default_factory=dict)
    """torch's packed kernel of each layer (and convolution geometry), built once."""
    engine_reason: str = ""

    @classmethod
    def make(cls, ckpt: Checkpoint, options: Options, progress: Progress | None) -> Context:
        """The engine (``--engine`` or the file's), the float-domain weights
        (``--reference``'s or dequantized) and the seeded generator of synthetic inputs."""
        from qinspect.loaders import load

        engine, why = choose_engine(ckpt, options.engine)
        ref = load(options.reference) if options.reference is not None else None
        seed = options.seed if options.seed is not None else 0
        return cls(engine=engine, weights=FloatWeights(ckpt, ref), seed=seed,
                   batch=options.batch, rng=np.random.default_rng(seed), progress=progress,
                   engine_reason=why)

    def tick(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


@dataclass
class Call:
    """One call of a static layer: its quantized input (and the float it came from)."""

    q: np.ndarray
    scale: float
    zero_point: int
    real: np.ndarray | None = None
    """The float values ``q`` quantizes, when known (user input, ``--model``)."""


def relu_fused(layer: Layer) -> bool:
    """Fused ReLU inferred from an output zero point at qmin (LinearReLU/ConvReLU keys are
    the same as the plain layer's; clamping at the zero point is then a no-op)."""
    return layer.output is not None and layer.output.zero_point == QMIN


def dequant(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float64 values of quint8 ints with a float32 scale (what the kernels use)."""
    return (np.asarray(q, np.float64) - zero_point) * float(np.float32(scale))


class OutputMetrics(TypedDict):
    """The output of a static op against its float domain, in :class:`LayerVerify`'s
    fields (a row takes them as ``**metrics``)."""

    sqnr_db: float
    max_error_lsb: float
    mean_error_lsb: float
    max_abs_error: float
    mean_abs_error: float
    clipped_low: float
    clipped_high: float


def metrics_static(float_out: np.ndarray, q_kernel: np.ndarray, scale: float, zp: int
                    ) -> OutputMetrics:
    from qinspect.quant.affine import dequantize_per_tensor
    from qinspect.quant.metrics import error_in_lsb, sqnr_db

    got = dequantize_per_tensor(q_kernel, scale, zp).astype(np.float64)
    s = float(np.float32(scale))
    lsb = error_in_lsb(float_out, got, s)
    # Clipped: the float value lies more than half a step beyond the range's edge, so the
    # clamp loses more than rounding would (metrics.clipped_fraction's convention).
    lo, hi = (QMIN - zp - CLIP_MARGIN_LSB) * s, (QMAX - zp + CLIP_MARGIN_LSB) * s
    n = max(float_out.size, 1)
    err = np.abs(float_out - got)
    return {
        "sqnr_db": sqnr_db(float_out, got),
        "max_error_lsb": lsb.max, "mean_error_lsb": lsb.mean,
        "max_abs_error": float(err.max()) if err.size else 0.0,
        "mean_abs_error": float(err.mean()) if err.size else 0.0,
        "clipped_low": float(np.count_nonzero(float_out < lo)) / n,
        "clipped_high": float(np.count_nonzero(float_out > hi)) / n,
    }


def _input_stats(calls: list[Call]) -> tuple[float | None, float | None]:
    """(fraction of real inputs clipped when quantized, input SQNR) where the real is known."""
    from qinspect.quant.metrics import clipped_fraction, sqnr_db

    known = [(c, c.real) for c in calls if c.real is not None]
    if not known:
        return None, None
    real = np.concatenate([np.asarray(r, np.float64).ravel() for _, r in known])
    deq = np.concatenate([dequant(c.q, c.scale, c.zero_point).ravel() for c, _ in known])
    clipped = sum(clipped_fraction(r, float(np.float32(c.scale)), c.zero_point, ACT_DTYPE)
                  * r.size for c, r in known) / max(real.size, 1)
    return float(clipped), sqnr_db(real, deq)


def agreement(engine: str, arithmetic: str, op: str, kernel: np.ndarray, ref: np.ndarray,
               unit: str, *, int16_pairs: bool = False) -> KernelAgreement:
    if unit == "LSB":
        diff = np.abs(kernel.astype(np.int64) - ref.astype(np.int64))
    else:
        diff = np.abs(kernel.astype(np.float64) - ref.astype(np.float64))
        same = (kernel == ref) | (np.isnan(kernel) & np.isnan(ref))
        diff = np.where(same, 0.0, diff)
    mismatches = int(np.count_nonzero(diff))
    return KernelAgreement(engine, arithmetic, op, int(diff.size), mismatches,
                           float(diff.max()) if diff.size else 0.0, unit, int16_pairs)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(p).ravel() for p in parts]) if parts else np.zeros(0)


def static_row(ctx: Context, layer: Layer, calls: list[Call], kind: InputKind, text: str,
               geo: ConvGeometry | None = None, notes: tuple[str, ...] = (), packed: Any = None,
               relu: bool | None = None) -> tuple[LayerVerify, list[np.ndarray]]:
    """Verify a static Linear or Conv on ``calls``; returns the row and the kernel outputs.

    ``packed``: torch's packed weight of this layer when a quantized model already has it;
    ``relu``: whether a ReLU is fused, when the file says so (else inferred from the
    output zero point)."""
    from qinspect.analyse.verify import kernels as K
    from qinspect.quant import reference as R

    out, wq = layer.output, layer.weight
    if out is None or wq is None or wq.quant is None:
        return not_verified(layer, "no output qparams or quantized weight to run"), []
    q = wq.quant
    if (bad := unusable_qparams(layer)) is not None:
        return not_verified(layer, f"{bad}: torch cannot run it"), []
    if out.dtype != ACT_DTYPE:
        return not_verified(layer, f"{out.dtype} activations are not supported"), []
    inferred = relu is None
    relu = relu_fused(layer) if relu is None else relu
    w_f, b_f, how, wnotes = ctx.weights.get(layer)
    if len(wq.shape) > 2:
        geo = geo or K.ConvGeometry.default(len(wq.shape) - 2)
        arith = K.conv_kernel(ctx.engine, q.zero_point, geo.groups)
        runner = ctx.cache.get(f"conv:{layer.name}:{geo}")
        if not isinstance(runner, K.ConvKernel):
            runner = ctx.cache[f"conv:{layer.name}:{geo}"] = K.ConvKernel(layer, ctx.engine, geo,
                                                                          packed)
        op = f"quantized::conv{len(wq.shape) - 2}d" + ("_relu" if relu else "")
    else:
        geo = None  # a Linear
        arith = K.linear_kernel(ctx.engine)
        runner = ctx.cache.get(f"linear:{layer.name}")
        if not isinstance(runner, K.LinearKernel):
            runner = ctx.cache[f"linear:{layer.name}"] = K.LinearKernel(layer, ctx.engine,
                                                                        packed)
        op = "quantized::linear" + ("_relu" if relu else "")
    floats, kernels_q, refs, outs = [], [], [], []
    depthwise = False
    pairs = K.int16_gemm(arith)
    for call in calls:
        kq = runner(call.q, call.scale, call.zero_point, out.scale, out.zero_point, relu)
        x = dequant(call.q, call.scale, call.zero_point)
        if geo is not None:
            depthwise = arith == "fbgemm" and K.fbgemm_depthwise(call.q.shape[1], wq.shape, geo)
            rq = R.quantized_conv(call.q, call.scale, call.zero_point, wq.values, q.scale,
                                  q.zero_point, layer.bias, out.scale, out.zero_point,
                                  kernel=arith, relu=relu, stride=geo.stride,
                                  padding=geo.padding, dilation=geo.dilation,
                                  groups=geo.groups, int16_pairs=depthwise,
                                  conv_sum=K.conv_sum, int16_gemm=pairs and not depthwise)
            fo = R.conv_float64(x, w_f, b_f, stride=geo.stride, padding=geo.padding,
                                dilation=geo.dilation, groups=geo.groups, conv_sum=K.conv_sum)
        else:
            rq = R.quantized_linear(call.q, call.scale, call.zero_point, wq.values, q.scale,
                                    q.zero_point, layer.bias, out.scale, out.zero_point,
                                    kernel=arith, relu=relu, int16_gemm=pairs)
            fo = x @ w_f.T + (0.0 if b_f is None else b_f)
        if relu:
            fo = np.maximum(fo, 0.0)
        floats.append(fo)
        kernels_q.append(kq)
        refs.append(rq)
        outs.append(kq)
    float_out, kq_all, rq_all = _cat(floats), _cat(kernels_q), _cat(refs)
    m = metrics_static(float_out, kq_all, out.scale, out.zero_point)
    in_clip, in_sqnr = _input_stats(calls)
    base = "onednn" if arith == "onednn_int16" else arith
    arith_text = base + (" depthwise (int16 pairs)" if depthwise else "")
    extra = list(notes) + list(wnotes)
    if relu and inferred:
        extra.append("ReLU assumed fused (output zero point 0, the range starts at 0.0): "
                     "the float domain applies it")
    suffix = "+ReLU" if relu and not layer.fused_relu else ""
    row = LayerVerify(
        name=layer.name, kind=layer.kind + suffix, mode=layer.mode.value,
        verified=True, input_kind=kind, input_text=text,
        input_shape=tuple(calls[0].q.shape) if calls else (),
        input_scale=calls[0].scale if calls else None,
        input_zero_point=calls[0].zero_point if calls else None,
        input_clipped=in_clip, input_sqnr_db=in_sqnr, output_scale=out.scale,
        output_zero_point=out.zero_point, float_domain=how, relu=relu,
        elements=int(float_out.size),
        kernel=agreement(ctx.engine, arith_text, op, kq_all, rq_all, "LSB",
                         int16_pairs=pairs and not depthwise),
        notes=tuple(extra), **m)
    return row, outs


def quantize_row(ctx: Context, layer: Layer, x: np.ndarray, kind: InputKind, text: str
                 ) -> tuple[LayerVerify, np.ndarray]:
    """A QuantStub: the float input quantized with its qparams (torch vs reference)."""
    from qinspect.analyse.verify import kernels as K
    from qinspect.quant.affine import quantize_per_tensor

    out = layer.output
    assert out is not None
    xf = np.asarray(x, np.float32)
    kq = K.quantize_kernel(xf, out.scale, out.zero_point)
    rq = quantize_per_tensor(xf, out.scale, out.zero_point, ACT_DTYPE)
    m = metrics_static(xf.astype(np.float64).ravel(), kq.ravel(), out.scale, out.zero_point)
    row = LayerVerify(
        name=layer.name, kind="QuantStub", mode=layer.mode.value, verified=True,
        input_kind=kind, input_text=text, input_shape=tuple(xf.shape),
        output_scale=out.scale, output_zero_point=out.zero_point,
        float_domain="the float input itself", elements=int(xf.size),
        kernel=agreement(ctx.engine, "fbgemm quantize", "quantize_per_tensor", kq, rq, "LSB"),
        notes=("the error is the input's rounding; clipped outputs are inputs outside the "
               "range the QuantStub was calibrated for",), **m)
    return row, kq


def add_row(ctx: Context, layer: Layer, calls: list[tuple[Call, Call]], relu: bool,
            kind: InputKind, text: str, notes: tuple[str, ...] = ()
            ) -> tuple[LayerVerify, list[np.ndarray]]:
    """A QFunctional ``add`` (``add_relu``): two quantized inputs, requantized sum."""
    from qinspect.analyse.verify import kernels as K
    from qinspect.quant import reference as R

    out = layer.output
    if out is None:
        return not_verified(layer, "no output qparams"), []
    if (bad := unusable_qparams(layer)) is not None:
        return not_verified(layer, f"{bad}: torch cannot run it"), []
    arith = K.linear_kernel(ctx.engine)
    floats, kqs, rqs, outs = [], [], [], []
    for a, b in calls:
        kq = K.add_kernel(layer, ctx.engine, (a.q, a.scale, a.zero_point),
                          (b.q, b.scale, b.zero_point), out.scale, out.zero_point, relu)
        rq = R.quantized_add(a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point,
                             out.scale, out.zero_point, kernel=arith, relu=relu)
        fo = dequant(a.q, a.scale, a.zero_point) + dequant(b.q, b.scale, b.zero_point)
        if relu:
            fo = np.maximum(fo, 0.0)
        floats.append(fo)
        kqs.append(kq)
        rqs.append(rq)
        outs.append(kq)
    float_out = _cat(floats)
    m = metrics_static(float_out, _cat(kqs), out.scale, out.zero_point)
    in_clip, in_sqnr = _input_stats([c for pair in calls for c in pair])
    op = "quantized::add_relu" if relu else "quantized::add"
    row = LayerVerify(
        name=layer.name, kind="QFunctional " + ("add_relu" if relu else "add"),
        mode=layer.mode.value, verified=True, input_kind=kind, input_text=text,
        input_shape=tuple(calls[0][0].q.shape) if calls else (),
        input_scale=calls[0][0].scale if calls else None,
        input_zero_point=calls[0][0].zero_point if calls else None,
        input_clipped=in_clip, input_sqnr_db=in_sqnr, output_scale=out.scale,
        output_zero_point=out.zero_point, float_domain="exact sum of the dequantized inputs",
        relu=relu, elements=int(float_out.size),
        kernel=agreement(ctx.engine, arith, op, _cat(kqs), _cat(rqs), "LSB"), notes=notes, **m)
    return row, outs


def dynamic_row(ctx: Context, layer: Layer, xs: list[np.ndarray], kind: InputKind, text: str,
                notes: tuple[str, ...] = ()) -> tuple[LayerVerify, list[np.ndarray]]:
    """A dynamic Linear (or RNN gate linear): float input, quantized per call inside."""
    from qinspect.analyse.verify import kernels as K
    from qinspect.quant import reference as R
    from qinspect.quant.metrics import sqnr_db

    wq = layer.weight
    if wq is None or wq.quant is None or not wq.is_quantized:
        return not_verified(layer, "float16 dynamic weights: verify covers int8 dynamic "
                            "layers only"), []
    if wq.quant.dtype != "qint8":
        return not_verified(layer, f"{wq.quant.dtype} dynamic weights are not supported"), []
    w_f, b_f, how, wnotes = ctx.weights.get(layer)
    arith = K.linear_kernel(ctx.engine)
    runner = ctx.cache.get(f"dyn:{layer.name}")
    if not isinstance(runner, K.DynamicLinearKernel):
        runner = ctx.cache[f"dyn:{layer.name}"] = K.DynamicLinearKernel(layer, ctx.engine)
    floats, kouts, routs, xreal, xdeq, scales = [], [], [], [], [], []
    for x in xs:
        x32 = np.asarray(x, np.float32)
        ko = runner(x32)
        ro, xq, sx, zx = R.dynamic_linear(x32, wq.values, wq.quant.scale, wq.quant.zero_point,
                                          layer.bias, kernel=arith, reduce_range=True,
                                          int16_gemm=K.int16_gemm(arith))
        floats.append(x32.astype(np.float64) @ w_f.T + (0.0 if b_f is None else b_f))
        kouts.append(ko)
        routs.append(ro)
        xreal.append(x32)
        xdeq.append(dequant(xq, sx, zx))
        scales.append(sx)
    float_out, k_all, r_all = _cat(floats), _cat(kouts), _cat(routs)
    err = np.abs(float_out - k_all.astype(np.float64))
    x_all = _cat(xreal)
    row = LayerVerify(
        name=layer.name, kind=layer.kind, mode=layer.mode.value, verified=True,
        input_kind=kind, input_text=text, input_shape=tuple(np.shape(xs[0])) if xs else (),
        input_scale=float(scales[0]) if scales else None, input_clipped=0.0 if xs else None,
        input_sqnr_db=sqnr_db(x_all, _cat(xdeq)) if xs else None,
        float_domain=how + " on the float input (the layer quantizes it itself)",
        elements=int(float_out.size), sqnr_db=sqnr_db(float_out, k_all),
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        kernel=agreement(ctx.engine, arith, "quantized::linear_dynamic", k_all, r_all, "abs",
                         int16_pairs=K.int16_gemm(arith)),
        notes=tuple(notes) + tuple(wnotes) + (
            "dynamic: the input is quantized per call from its own min/max (it never clips; "
            "its rounding is the error), the output is float (no output LSB)",))
    return row, kouts


def unusable_qparams(layer: Layer) -> str | None:
    """Why torch cannot run ``layer`` with the qparams the file holds (None: it can):
    a scale that is not a positive finite number, or a zero point outside the dtype."""
    from qinspect.quant.dtypes import QDTYPES

    out = layer.output
    if out is not None:
        if not (np.isfinite(out.scale) and out.scale > 0):
            return f"output scale {out.scale:g} is not a positive finite number"
        info = QDTYPES.get(out.dtype)
        if info is not None and not info.qmin <= out.zero_point <= info.qmax:
            return f"output zero point {out.zero_point} is outside {out.dtype}'s range"
    q = layer.weight.quant if layer.weight is not None and layer.weight.is_quantized else None
    if q is not None:
        s = np.asarray(q.scale, dtype=np.float64)
        if not bool(np.all(np.isfinite(s) & (s > 0))):
            return "some weight scales are not positive finite numbers"
        info = QDTYPES.get(q.dtype)
        zp = np.asarray(q.zero_point)
        if info is not None and zp.dtype.kind in "iu" and zp.size and not bool(
                np.all((zp >= info.qmin) & (zp <= info.qmax))):
            return f"some weight zero points are outside {q.dtype}'s range"
    return None


def not_verified(layer: Layer, reason: str) -> LayerVerify:
    return LayerVerify(name=layer.name, kind=layer.kind, mode=layer.mode.value,
                       verified=False, reason=reason)


