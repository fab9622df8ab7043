"""``verify`` on a torchao ``quantize_`` state_dict: run each quantized Linear in three ways.

A torchao state_dict has no graph, so every quantized Linear runs on its own input: the
user's ``--input`` when its last dimension is the layer's ``in_features``, otherwise an
isolated synthetic batch ~ N(0, 1). No chain is assumed (the ops between layers are not
in the file). For each layer, on the same float input ``x``:

1. **float domain**: ``x @ W.T + b`` in float64 with ``W`` the dequantized weight, or the
   float weight of ``--reference``: what the layer means;
2. **kernel**: torchao's own CPU kernel: the layer's ``Int8Tensor`` /
   ``IntxUnpackedToInt8Tensor`` is rebuilt from the file's ``qdata``, ``scale``,
   ``zero_point`` and ``block_size`` (no pickle from the file is run) and
   ``torch.nn.functional.linear`` dispatches to torchao's implementation;
3. **reference**: qinspect's numpy arithmetic for the same layer:

   * weight-only (``Int8WeightOnlyConfig``, ``IntxWeightOnlyConfig`` int4 per group): the
     output is float, ``f32(x @ dq(W).T) + b`` with ``dq`` bit-exact with torchao's
     dequantize (:func:`qinspect.quant.affine.dequantize_blockwise`); the float32 matmul
     sums in another order than torch's BLAS, so elements agree when they differ by less
     than the float32 dot-product bound ``K * 2**-24 * sum_k |x_k| |w_k|``;
   * dynamic (``Int8DynamicActivationInt8WeightConfig``): each row (token) of ``x`` is
     quantized at run time to int8, symmetric, ``s = max(|min|, |max|) / 127.5`` (at least
     float32 eps), ``q = clamp(rint(f32(x * f32(1 / s))), -128, 127)``; the int32 product
     with the int8 weight is rescaled ``f32(f32(f32(acc) * s) * s_w) + b``: bit-exact.

Per layer: SQNR of the kernel output against the float domain, max/mean absolute error
(outputs are float: no output LSB and nothing clips), and kernel-vs-reference agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qinspect.analyse.verify import rows as V
from qinspect.analyse.verify import types as T
from qinspect.analyse.verify.kernels import torchao_int8_pairs_saturate
from qinspect.errors import VerifyError
from qinspect.model import Checkpoint, Family, Layer, Mode
from qinspect.quant.affine import block_grid, dequantize_blockwise

ENGINE = "torchao"
SYNTH_BATCH = 8
F32_EPS = float(np.finfo(np.float32).eps)
U32 = 2.0 ** -24


def verify_torchao(ckpt: Checkpoint, options: T.Options) -> T.VerifyReport:
    """Verify every quantized Linear of a torchao state_dict (see the module docstring)."""
    from qinspect.inputs import read_input
    from qinspect.loaders import load
    from qinspect.loaders.torchao import INSTALL_HINT

    try:
        _import_torchao()
    except ImportError as exc:
        raise VerifyError(f"{ckpt.path}: running torchao layers needs torchao "
                          f"({INSTALL_HINT})") from exc
    user = read_input(options.input).limited(options.batch) \
        if options.input is not None else None
    ref = load(options.reference) if options.reference is not None else None
    pairs = {}
    if ref is not None:
        from qinspect.analyse.pairing import pair_layers

        pairs = {p.a.name: p.b for p in pair_layers(ckpt, ref, fold_bn=False).pairs}
    rng = np.random.default_rng(options.seed if options.seed is not None else 0)
    layers = [lay for lay in ckpt.layers if lay.mode in (Mode.WEIGHT_ONLY, Mode.DYNAMIC)]
    if not layers:
        raise VerifyError(f"{ckpt.path}: no torchao quantized layer to verify")
    rows = [_row(layer, user, pairs.get(layer.name), rng, options.batch) for layer in layers]
    float_domain = ("dequantized weights (no --reference): the SQNR measures activation "
                    "quantization only (zero error for weight-only layers up to float "
                    "rounding)" if ref is None else
                    f"float weights of {ref.path}: the SQNR includes weight error")
    input_text = (user.describe() if user is not None else
                  "none: every layer runs on synthetic input")
    return T.VerifyReport(
        path=ckpt.path, mode="file", engine=ENGINE,
        engine_reason="torchao's CPU kernels for its tensor subclasses, rebuilt from the "
                      "file's qdata/scale/zero_point/block_size",
        input_text=input_text, layers=tuple(rows), float_domain=float_domain,
        scope=("a torchao state_dict stores no graph: each quantized Linear ran on its own "
               "input (the --input where its last dimension fits, synthetic otherwise), "
               "torchao's kernel against qinspect's reference; no chain is assumed"),
        notes=("torchao state_dict: no graph, so each quantized Linear runs on its own input "
               "(the --input where its last dimension fits, synthetic otherwise); no chain "
               "is assumed",))


class TorchaoRunner:
    """A torchao ``quantize_`` state_dict: torchao's own kernels, layer by layer."""

    name = "torchao"
    needs: dict[str, str] = {}
    refuses = {
        "model": "not supported for torchao state_dicts yet: verify runs each quantized "
                 "Linear of the file on its own input",
        "engine": "torchao layers run torchao's own CPU kernels, not a quantized engine's",
    }

    def accepts(self, ckpt: Checkpoint, options: T.Options) -> bool:
        return ckpt.family is Family.TORCHAO

    def run(self, ckpt: Checkpoint, options: T.Options, progress: T.Progress | None
            ) -> T.VerifyReport:
        return verify_torchao(ckpt, options)


def _import_torchao() -> None:
    """``import torchao`` (registers its tensor subclasses' kernels) without its import-time
    log lines (optional CUDA libraries it cannot load here, no triton, a torch deprecation)."""
    from qinspect.analyse.verify.quiet import quiet_libraries

    with quiet_libraries():
        import torchao  # noqa: F401


@dataclass(frozen=True)
class _Spec:
    """What the file says about one torchao weight, as torchao's constructors take it."""

    cls: str
    qdata: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    block_size: tuple[int, ...]
    dtype: str


def _spec(layer: Layer) -> _Spec | str:
    w = layer.weight
    q = w.quant if w is not None else None
    if w is None or q is None or q.block_size is None:
        return "no torchao block-wise weight"
    if len(w.shape) != 2:
        return f"{len(w.shape)}-D weight: verify covers torchao Linear layers only"
    try:
        grid = block_grid(w.shape, q.block_size)
    except ValueError as exc:
        return str(exc)
    if int(np.prod(grid)) != q.scale.size:
        return f"{q.scale.size} scales for a grid of {list(grid)} blocks"
    cls = layer.tensor_class
    if cls not in ("Int8Tensor", "IntxUnpackedToInt8Tensor"):
        return f"{layer.kind}: not a torchao weight class verify knows"
    return _Spec(cls, np.asarray(w.values), np.asarray(q.scale).astype(np.float32).reshape(grid),
                 np.asarray(q.zero_point).astype(np.int8).reshape(grid), tuple(q.block_size),
                 q.dtype)


def _torchao_weight(layer: Layer, spec: _Spec):
    """The layer's torchao tensor subclass, rebuilt from the file's arrays."""
    import torch

    qdata = torch.from_numpy(np.ascontiguousarray(spec.qdata).astype(np.int8))
    scale, zp = torch.from_numpy(spec.scale.copy()), torch.from_numpy(spec.zero_point.copy())
    if spec.cls == "Int8Tensor":
        from torchao.quantization import Int8Tensor
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quant_primitives import MappingType
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import (
            QuantizeTensorToInt8Kwargs,
        )

        kwargs = None
        if layer.mode is Mode.DYNAMIC:
            kwargs = QuantizeTensorToInt8Kwargs(granularity=PerRow(),
                                                mapping_type=MappingType.SYMMETRIC)
        return Int8Tensor(qdata, scale, list(spec.block_size), torch.float32,
                          zero_point=zp, act_quant_kwargs=kwargs)
    from torchao.quantization import IntxUnpackedToInt8Tensor

    target = getattr(torch, spec.dtype)
    return IntxUnpackedToInt8Tensor(qdata, scale, zp, target, list(spec.block_size),
                                    torch.float32, None)


def _row(layer: Layer, user, ref_layer: Layer | None, rng: np.random.Generator,
         batch: int | None) -> T.LayerVerify:
    import torch
    import torch.nn.functional as F

    spec = _spec(layer)
    if isinstance(spec, str):
        return V.not_verified(layer, spec)
    dynamic = layer.mode is Mode.DYNAMIC
    source = layer.input_source.explanation if layer.input_source else ""
    if dynamic and (spec.cls != "Int8Tensor" or "symmetric" not in source
                    or "asymmetric" in source):
        return V.not_verified(layer, "dynamic activation quantization other than int8 "
                              "symmetric per row: not supported yet")
    k = spec.qdata.shape[1]
    x, kind, text = _input(user, k, rng, batch)
    dq = dequantize_blockwise(spec.qdata, spec.scale, spec.zero_point, spec.block_size)
    bias = None if layer.bias is None else np.asarray(layer.bias, np.float32)
    notes: list[str] = []
    w_f, how = dq.astype(np.float64), "dequantized weights"
    if ref_layer is not None and ref_layer.weight is not None:
        rw = np.asarray(ref_layer.weight.values)
        if rw.shape == dq.shape and np.issubdtype(rw.dtype, np.floating):
            w_f, how = rw.astype(np.float64), f"float weights of '{ref_layer.name}'"
        else:
            notes.append(f"reference weight {rw.shape} does not fit {dq.shape}: dequantized "
                         "weights used")
    x2 = x.reshape(-1, k)
    float_out = x2.astype(np.float64) @ w_f.T + (0.0 if bias is None else bias)
    try:
        weight = _torchao_weight(layer, spec)
        with torch.no_grad():
            kern = F.linear(torch.from_numpy(x2.copy()), weight,
                            None if bias is None else torch.from_numpy(bias)).numpy()
    except Exception as exc:
        return V.not_verified(layer, f"torchao's kernel refused the layer: "
                              f"{type(exc).__name__}: {exc}")
    if dynamic:
        pairs = torchao_int8_pairs_saturate()
        refo, xq, sx = dynamic_linear_reference(x2, spec.qdata, spec.scale, bias,
                                                int16_pairs=pairs)
        agreement = V.agreement(ENGINE, "int8 x int8 -> int32, rescaled in float32",
                                 "torchao Int8Tensor linear (dynamic per-token int8)",
                                 kern, refo, "abs", int16_pairs=pairs)
        in_sqnr = _sqnr(x2, xq.astype(np.float64) * sx.astype(np.float64))
        in_scale = float(sx.reshape(-1)[0])
        domain = how + " on the float input (the layer quantizes it per row itself)"
        notes.append("dynamic: each row (token) of the input is quantized to int8 at run time, "
                     "symmetric, scale max|x| / 127.5 (it never clips; its rounding is the "
                     "error); the output is float (no output LSB); the reference is "
                     "qinspect's numpy arithmetic")
        if pairs:
            exact, _, _ = dynamic_linear_reference(x2, spec.qdata, spec.scale, bias)
            changed = int(np.count_nonzero(exact.view(np.uint32) != refo.view(np.uint32)))
            notes.append("torchao's int8 matmul here adds byte-product pairs in int16 with "
                         "saturation (its u8s8 path on a VNNI CPU, oneDNN capped below VNNI by "
                         f"ONEDNN_MAX_CPU_ISA); the reference does the same: {changed} of "
                         f"{refo.size} outputs differ from exact int32 arithmetic")
    else:
        refo = (x2 @ dq.T).astype(np.float32)
        if bias is not None:
            refo = refo + bias
        bound = k * U32 * (np.abs(x2).astype(np.float64) @ np.abs(dq).astype(np.float64).T)
        if bias is not None:
            bound = bound + U32 * np.abs(float_out)
        agreement = _bounded(kern, refo, bound, spec)
        in_sqnr, in_scale = None, None
        domain = how + " on the float input (not quantized: weight-only)"
        notes.append(f"weight-only ({spec.dtype} {_gran(spec)}): the float input is multiplied "
                     "by the dequantized weight; the output is float (no output LSB)")
    err = np.abs(float_out - kern.astype(np.float64))
    return T.LayerVerify(
        name=layer.name, kind=layer.kind, mode=layer.mode.value, verified=True,
        input_kind=kind, input_text=text, input_shape=tuple(x.shape), input_scale=in_scale,
        input_clipped=0.0 if dynamic else None, input_sqnr_db=in_sqnr, float_domain=domain,
        elements=int(float_out.size), sqnr_db=_sqnr(float_out, kern),
        max_abs_error=float(err.max()) if err.size else 0.0,
        mean_abs_error=float(err.mean()) if err.size else 0.0,
        kernel=agreement, notes=tuple(notes))


def _gran(spec: _Spec) -> str:
    b = spec.block_size
    if b[-1] == spec.qdata.shape[-1]:
        return "per row"
    return f"per group of {b[-1]}"


def _input(user, k: int, rng: np.random.Generator, batch: int | None
           ) -> tuple[np.ndarray, T.InputKind, str]:
    from qinspect.inputs import shape_text

    if user is not None:
        a = np.asarray(user.first)
        if a.ndim >= 1 and a.shape[-1] == k and np.issubdtype(a.dtype, np.floating):
            x = a.astype(np.float32).reshape(-1, k) if a.ndim > 1 else a.astype(np.float32)[None]
            return x, T.InputKind.USER, f"user input {shape_text(a.shape)}"
    x = rng.standard_normal((batch or SYNTH_BATCH, k)).astype(np.float32)
    why = (f" (the input's last dimension is not {k})" if user is not None else "")
    text = f"isolated, synthetic input {shape_text(x.shape)} ~ N(0, 1){why}"
    return x, T.InputKind.SYNTHETIC, text


def _sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    from qinspect.quant.metrics import sqnr_db

    return sqnr_db(np.asarray(ref, np.float64), np.asarray(test, np.float64))


def _bounded(kern: np.ndarray, ref: np.ndarray, bound: np.ndarray, spec: _Spec
             ) -> T.KernelAgreement:
    diff = np.abs(kern.astype(np.float64) - ref.astype(np.float64))
    mismatches = int(np.count_nonzero(diff > bound))
    op = (f"torchao {spec.cls} linear (weight-only)")
    return T.KernelAgreement(ENGINE, "float32 matmul, dequantized weight; agreement: within "
                             "K * 2^-24 * |x|.|w|", op, int(diff.size), mismatches,
                             float(diff.max()) if diff.size else 0.0, "abs")


def quantize_per_token_symmetric(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchao's dynamic int8 activation quantization (``Int8Tensor.from_hp``, ``PerRow``,
    ``MappingType.SYMMETRIC``) of a 2-D float32 ``x``: ``(q int8, scale (M, 1) float32)``.

    ``amax = max(-min(min(x), 0), max(max(x), 0))`` per row, ``s = max(f32(amax / 127.5),
    eps32)``, ``q = clamp(rint(f32(x * f32(1 / s))), -128, 127)`` (zero point 0)."""
    x32 = np.asarray(x, np.float32)
    lo = np.minimum(x32.min(axis=1, keepdims=True), np.float32(0))
    hi = np.maximum(x32.max(axis=1, keepdims=True), np.float32(0))
    amax = np.maximum(-lo, hi)
    s = np.maximum((amax / np.float32(127.5)).astype(np.float32), np.float32(F32_EPS))
    inv = (np.float32(1.0) / s).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.clip(np.rint(x32 * inv), -128, 127).astype(np.int8)
    return q, s


def dynamic_linear_reference(x: np.ndarray, w_q: np.ndarray, w_scale: np.ndarray,
                             bias: np.ndarray | None, *, int16_pairs: bool = False
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchao's Int8Tensor dynamic linear in numpy: ``(y float32, x_q, x_scale)``.

    ``acc = x_q @ w_q.T`` (exact, int64); ``y = f32(f32(f32(acc) * s_x) * s_w) + b``.
    ``int16_pairs``: torchao's u8s8 path on a kernel that saturates byte-product pairs
    (:func:`~qinspect.analyse.verify.kernels.torchao_int8_pairs_saturate`): ``x_q + 128``
    (uint8) times ``w_q``, neighbours (0, 1), (2, 3)... along K clipped to int16, minus
    128 x the weight's row sums."""
    xq, sx = quantize_per_token_symmetric(x)
    if int16_pairs:
        from qinspect.quant.reference import accumulate_linear

        acc = accumulate_linear(xq.astype(np.int64) + 128, 128, w_q, 0,
                                int16_gemm=True).astype(np.int64)
    else:
        acc = xq.astype(np.int64) @ np.asarray(w_q, np.int64).T
    y = (acc.astype(np.float32) * sx).astype(np.float32)
    y = (y * np.asarray(w_scale, np.float32).reshape(-1)).astype(np.float32)
    if bias is not None:
        y = (y + np.asarray(bias, np.float32)).astype(np.float32)
    return y, xq, sx
