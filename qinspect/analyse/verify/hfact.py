"""Activation quantization of Hugging Face W8A8 / FP8 / NVFP4 schemes, in numpy (no torch).

A scheme is decided from the layer (its stored ``input_scale`` / ``input_global_scale``, or
none for dynamic layers) and the checkpoint's ``quantization_config``, as data
(:class:`ActScheme`); :func:`quantize` reproduces the producing library's arithmetic:

* compressed-tensors ``int`` / ``float`` activations (``quantization/lifecycle/forward.py``
  ``_quantize``: ``q = clamp(round(x / scale) + zp, qmin, qmax)``, the FP8 "round" being the
  cast to ``float8_e4m3fn``); dynamic scales from ``utils/helpers.py calculate_qparams``
  (the range widened to include 0; symmetric: ``max(|min|, |max|) / ((qmax - qmin) / 2)``,
  so int8 divides by 127.5 and FP8 by 448), per token (``strategy: token``) or per tensor;
* transformers ``finegrained_fp8`` ``act_quant`` (DeepSeek block FP8): per token, per group of
  ``block[1]`` columns, ``scale = amax / 448``;
* NVFP4 (compressed-tensors ``tensor_group``, ModelOpt): groups of 16, local scale
  ``amax / 6`` multiplied by the global scale and stored in FP8 E4M3, codes in FP4 E2M1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FP8_MAX = 448.0
FP4_MAX = 6.0


@dataclass(frozen=True)
class ActScheme:
    """How a layer quantizes its float input."""

    element: str
    """``int8``, ``float8_e4m3fn`` or ``float4_e2m1``."""
    dynamic: bool
    strategy: str
    """``tensor``, ``token`` or ``group`` (per token, groups of ``group_size`` columns)."""
    group_size: int | None = None
    scale: float | None = None
    """Static scale (multiplies the codes)."""
    zero_point: int = 0
    global_scale: float | None = None
    """NVFP4: the global scale the local FP8 scales are divided by."""
    symmetric: bool = True
    half_range: float = 127.5
    """int8 dynamic scale = amax / half_range: compressed-tensors 127.5, bitsandbytes 127."""
    outlier_threshold: float | None = None
    """bitsandbytes LLM.int8: input columns holding a value with ``|x| >= threshold`` are
    not quantized (their product runs in float16)."""

    @property
    def qrange(self) -> tuple[float, float]:
        return {"int8": (-128.0, 127.0), "float8_e4m3fn": (-FP8_MAX, FP8_MAX),
                "float4_e2m1": (-FP4_MAX, FP4_MAX)}[self.element]

    def describe(self) -> str:
        what = {"int8": "int8", "float8_e4m3fn": "FP8 E4M3",
                "float4_e2m1": "NVFP4 (E2M1, FP8 scale per 16)"}[self.element]
        if self.element == "float4_e2m1":
            return f"{what}, dynamic local scales, global scale {self.global_scale:.6g}"
        if not self.dynamic:
            return f"{what}, static scale {self.scale:.6g}"
        per = {"tensor": "per tensor", "token": "per token",
               "group": f"per token in groups of {self.group_size}"}[self.strategy]
        return f"{what}, dynamic {per}"


@dataclass(frozen=True)
class Quantized:
    """An input after quantization: codes, the scale of every code, the dequantized values."""

    codes: np.ndarray
    """float64 code values (integers for int8; E4M3 / E2M1 values for floats)."""
    scales: np.ndarray
    """float32, broadcastable to ``codes``."""
    values: np.ndarray
    """float32 ``codes * scales`` (``(codes - zp) * scales`` for int), what the kernel sees."""
    clipped: float
    """Fraction of inputs beyond the range of a static scale (0 for dynamic schemes)."""
    outliers: np.ndarray | None = None
    """bitsandbytes: the input columns left in float16 (outliers)."""


def scheme_for(layer: Any, qconfig: Mapping[str, Any], module: str) -> ActScheme | None:
    """The activation scheme of ``layer`` (None: weight-only)."""
    from qinspect.model import Mode, ScaleOp

    act = layer.input
    if act is not None and act.op is ScaleOp.DIVIDE:
        return ActScheme("float4_e2m1", True, "group", 16, global_scale=float(act.scale))
    if act is not None and act.dtype == "float4_e2m1":
        return ActScheme("float4_e2m1", True, "group", 16, global_scale=1.0 / float(act.scale))
    args = _ct_input_args(qconfig, module)
    if act is not None:
        element = "float8_e4m3fn" if act.dtype.startswith("float8") else "int8"
        if args.get("type") == "float" and args.get("num_bits") == 4:
            return ActScheme("float4_e2m1", True, "group", 16, global_scale=1.0 / act.scale)
        return ActScheme(element, False, "tensor", scale=float(act.scale),
                         zero_point=int(act.zero_point))
    if layer.mode is not Mode.DYNAMIC:
        return None
    if qconfig.get("quant_method") == "bitsandbytes":  # LLM.int8 (int8_vectorwise_quant)
        t = qconfig.get("llm_int8_threshold", 6.0)
        return ActScheme("int8", True, "token", half_range=127.0,
                         outlier_threshold=float(t) if isinstance(t, (int, float)) and t > 0
                         else None)
    if qconfig.get("quant_method") == "fp8":  # transformers finegrained FP8
        block = qconfig.get("weight_block_size")
        if isinstance(block, list) and len(block) == 2:
            return ActScheme("float8_e4m3fn", True, "group", int(block[1]))
        return ActScheme("float8_e4m3fn", True, "token")
    element = "float8_e4m3fn" if args.get("type") == "float" else "int8"
    if args.get("num_bits") == 4 and args.get("type") == "float":
        element = "float4_e2m1"
    strategy = str(args.get("strategy") or "token")
    group = args.get("group_size")
    if strategy not in ("tensor", "token", "group"):
        strategy = "token"
    return ActScheme(element, True, strategy, int(group) if group else None,
                     symmetric=bool(args.get("symmetric", True)))


def _ct_input_args(qconfig: Mapping[str, Any], module: str) -> dict[str, Any]:
    """``input_activations`` of the compressed-tensors config group that targets ``module``
    (the loader's own choice of group)."""
    return dict(ct_group(qconfig, module).get("input_activations") or {})


def ct_group(qconfig: Mapping[str, Any], module: str) -> dict[str, Any]:
    from qinspect.loaders.hf.formats import _ct_group
    from qinspect.loaders.hf.hfconfig import QuantConfig

    return _ct_group(QuantConfig(method=None, raw=dict(qconfig), source=""), module)


def quantize(x: np.ndarray, s: ActScheme) -> Quantized:
    """``x`` (float32, ``[rows, in]``) quantized as the scheme's producer does it."""
    x = np.asarray(x, np.float32)
    if s.element == "float4_e2m1":
        return _nvfp4(x, s)
    lo, hi = s.qrange
    outliers = None
    if s.outlier_threshold is not None:
        outliers = np.any(np.abs(x) >= np.float32(s.outlier_threshold), axis=0)
    src = np.where(outliers, np.float32(0), x) if outliers is not None else x
    shaped, cols = _grouped(src, s)
    if s.dynamic:
        sc, zp = _dynamic_scales(shaped, s, hi), 0.0
    else:
        sc, zp = np.asarray(np.float32(s.scale)), float(s.zero_point)
    scaled = shaped / sc  # float32, as torch divides
    if s.element == "int8":
        codes = np.clip(np.round(scaled) + np.float32(zp), lo, hi).astype(np.float32)
        values = ((codes - np.float32(zp)) * sc).astype(np.float32)
    else:
        import ml_dtypes

        codes = np.clip(scaled, lo, hi).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        values = (codes * sc).astype(np.float32)
    codes, values = _ungrouped(codes, cols), _ungrouped(values, cols)
    if outliers is not None:  # outlier columns stay float (float16 in bitsandbytes)
        values = np.where(outliers, x.astype(np.float16).astype(np.float32), values)
        codes = np.where(outliers, 0.0, codes)
    clipped = 0.0
    if not s.dynamic:
        step = float(np.float32(s.scale))
        edge_lo, edge_hi = (lo - zp - 0.5) * step, (hi - zp + 0.5) * step
        clipped = float(np.count_nonzero((x < edge_lo) | (x > edge_hi))) / max(x.size, 1)
    scales = sc if s.strategy != "group" else np.repeat(sc[..., 0], s.group_size or 1,
                                                         axis=-1)[..., :cols]
    return Quantized(codes.astype(np.float64), np.asarray(scales, np.float32), values,
                     clipped, outliers)


def _grouped(x: np.ndarray, s: ActScheme) -> tuple[np.ndarray, int]:
    """Per-token groups ``[rows, groups, size]`` (the last one zero-padded: padding never
    changes a group's amax); other strategies unchanged."""
    cols = x.shape[-1]
    if s.strategy == "group" and s.group_size:
        g = s.group_size
        pad = -cols % g
        if pad:
            x = np.concatenate([x, np.zeros((*x.shape[:-1], pad), x.dtype)], axis=-1)
        return x.reshape(*x.shape[:-1], x.shape[-1] // g, g), cols
    return x, cols


def _ungrouped(a: np.ndarray, cols: int) -> np.ndarray:
    if a.ndim == 3:
        return a.reshape(a.shape[0], -1)[:, :cols]
    return a


def _dynamic_scales(g: np.ndarray, s: ActScheme, qmax: float) -> np.ndarray:
    """compressed-tensors ``calculate_qparams`` (symmetric): the range includes 0, then
    ``max(|min|, |max|) / ((qmax - qmin) / 2)``; transformers ``act_quant``: amax / 448;
    bitsandbytes ``int8_vectorwise_quant``: row absmax / 127."""
    if s.strategy == "tensor":
        lo, hi = np.minimum(g.min(), 0), np.maximum(g.max(), 0)
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    else:
        lo = np.minimum(g.min(axis=-1, keepdims=True), np.float32(0))
        hi = np.maximum(g.max(axis=-1, keepdims=True), np.float32(0))
    amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
    half = np.float32(s.half_range) if s.element == "int8" else np.float32(qmax)
    scales = amax / half
    tiny = np.finfo(np.float32).eps
    return np.where(scales == 0, np.float32(tiny), scales).astype(np.float32)


def _nvfp4(x: np.ndarray, s: ActScheme) -> Quantized:
    """NVFP4 activations: per 16 values, ``fp8(amax / 6 * g)`` as the local scale, codes
    ``e2m1(clamp(x / (local / g), -6, 6))`` (compressed-tensors ``tensor_group``)."""
    import ml_dtypes

    g = np.float32(s.global_scale)
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // 16, 16)
    amax = np.abs(grouped).max(axis=-1, keepdims=True).astype(np.float32)
    local = np.clip(amax / np.float32(FP4_MAX) * g, -FP8_MAX, FP8_MAX)
    local = local.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    eff = np.where(local == 0, np.float32(1.0), local / g).astype(np.float32)
    codes = np.clip(grouped / eff, -FP4_MAX, FP4_MAX).astype(ml_dtypes.float4_e2m1fn)
    codes = codes.astype(np.float32)
    values = (codes * eff).astype(np.float32)
    return Quantized(codes.astype(np.float64).reshape(x.shape), eff,
                     values.reshape(x.shape), 0.0)
