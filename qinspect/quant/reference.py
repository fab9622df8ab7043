"""Integer reference kernels for quantized layers, in numpy (no torch import).

Each function computes what a PyTorch quantized CPU kernel computes, from the integers
and qparams a checkpoint stores, so that ``qinspect verify`` can show the checkpoint
means what ``qinspect show`` says it means. Three arithmetic recipes exist, named after
the library that runs them (the *kernel*, not the engine: torch's ``x86`` engine runs
linear layers with fbgemm and convolutions with oneDNN when the CPU has AVX512-VNNI and
the weights are symmetric, see :mod:`qinspect.analyse.verify.kernels`):

Notation as in :mod:`qinspect.quant.affine`: ``f32(.)`` rounds to float32, ``rint``
rounds half to even, ``acc = sum_k (x_q - zx)(w_q - zw)`` is the exact integer
accumulator (kept in int32, wrapping like the kernels' int32 registers).

* ``fbgemm`` (fbgemm ``ReQuantizeOutput`` with a float bias)::

      atws = f32(f32(sx) * f32(sw[c]))          mult = f32(atws / f32(so))
      v    = f32(f32(f32(acc) + f32(f32(b[c]) / atws)) * mult)
      q    = clamp(sat(rint(v)) + zo, zo if relu else 0, 255)

* ``onednn`` (oneDNN int8 convolution; scales applied one after the other)::

      d = f32(f32(f32(acc) * f32(sx)) * f32(sw[c])) + f32(b[c])     [max(d, 0) if relu]
      v = f32(f32(d * f32(1 / so)) + zo)                           (1/so in float64)
      q = clamp(rint(v), 0, 255)            (saturated in float: no integer overflow)

* ``onednn_int16`` (oneDNN int8 convolution on a VNNI CPU with oneDNN capped below VNNI
  by ``ONEDNN_MAX_CPU_ISA``: one combined scale, byte-product pairs saturated to int16)::

      d = f32(f32(acc) * f32(f32(sx) * f32(sw[c]))) + f32(b[c])     [max(d, 0) if relu]
      v, q as ``onednn``

* ``qnnpack`` (bias quantized to int32 first, one multiplier per channel)::

      qb   = quantize(b, f64(sw[c]) * f64(f32(sx)), 0, qint32)   (torch's QuantizeBias)
      mult = f32(f32(f32(sw[c]) * f32(sx)) * f32(1 / f32(so)))
      q    = clamp(sat(rint(f32(f32(acc + qb) * mult))) + zo, zo if relu else 0, 255)

``sat(.)``: the AVX conversion ``cvtps2dq`` turns values beyond int32 (and NaN) into
INT32_MIN, which then saturates to the *bottom* of the range: a requantization scale
so large that ``v`` overflows gives qmin, not qmax, in fbgemm and QNNPACK (a real torch
quirk, reproduced). oneDNN saturates in float and gives qmax.

Dynamic layers (``dynamic_linear``): the float input is quantized per call to quint8
with ``choose_dynamic_qparams`` (torch's ``quant_utils::ChooseQuantizationParams``;
fbgemm halves the range to [0, 127], QNNPACK ignores ``reduce_range``), then::

      fbgemm:  out = fma(f32(acc), f32(f32(sx) * f32(sw[c])), f32(b[c]))
      qnnpack: out = f32(f32(acc) * f32(f32(sx) * f32(sw[c]))) + f32(b[c])

Quantized ``add`` (``add_relu``)::

      fbgemm:  d_a = fma(f32(sa), f32(a), f32(f32(sa) * -za)), same for b
               q = clamp(rint(f32(f32(d_a + d_b) * f32(1 / f32(so)))) + zo, 0, 255)
      qnnpack: fixed-point multipliers 2**(21 - e) * sa/so, rounding shift (see ``_qnnp_add``)

The accumulator is summed in float64 by BLAS: every product ``(x_q - zx)(w_q - zw)``
is an integer of at most 2**16 in magnitude, so every partial sum of fewer than 2**37
terms is an integer below 2**53 and exact in float64 whatever the summation order;
longer sums fall back to int64 arithmetic. Verified against torch 2.13.0+cpu on an
AVX512-VNNI x86-64 machine and on an AVX2 one without VNNI (``tests/quant/test_reference.py``).
fbgemm without VNNI sums pairs of raw byte products in int16 with saturation
(``vpmaddubsw``), which activations in the full 0..255 range can overflow
(``reduce_range`` activations, the fbgemm default, never do): ``int16_gemm=True``
reproduces it, pairing neighbours along K (a Linear's input features; a convolution's
im2col order per group: kernel taps outermost, channels innermost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .affine import _fma_f32, quantize_per_channel, quantize_per_tensor

__all__ = [
    "KERNELS",
    "accumulate_conv",
    "accumulate_linear",
    "choose_dynamic_qparams",
    "conv_float64",
    "dynamic_linear",
    "quantized_add",
    "quantized_conv",
    "quantized_linear",
    "requantize",
]

KERNELS = ("fbgemm", "onednn", "onednn_int16", "qnnpack")
"""Requantization recipes :func:`requantize` implements."""

QMIN, QMAX = 0, 255
"""quint8: the activation dtype of eager-mode static quantization."""

_EXACT_TERMS = 2**37
"""Below this many products per output, float64 sums of 8-bit products are exact."""
_INT32_MIN = -(2**31)
_SMALL_SCALE = np.float32(6.1e-5)
"""torch's SMALL_SCALE_THRESHOLD for dynamic qparams (fp16's smallest normal)."""
_CHUNK_ELEMENTS = 1 << 23
"""im2col chunk size (elements of float64) bounding the memory of one conv step."""

f32 = np.float32
f64 = np.float64
ConvSum = Callable[..., NDArray[np.float64]]
"""``conv_sum(x, w, stride, padding, dilation, groups, exact)`` of float64 arrays."""
_Num = TypeVar("_Num", bound=np.number)
Geometry = int | Sequence[int]
"""A convolution's stride, padding or dilation: one value for every spatial axis, or one each."""


# ----------------------------------------------------------------------- accumulation


def _wrap_int32(v: ArrayLike) -> NDArray[np.int32]:
    """int64 (or integer-valued float) values wrapped to int32, as int32 arithmetic does."""
    return np.asarray(v, dtype=np.int64).astype(np.int32)


def _centred(q: ArrayLike, zp: ArrayLike, dtype: DTypeLike) -> NDArray[Any]:
    centred: NDArray[Any] = np.asarray(q).astype(dtype) - np.asarray(zp).astype(dtype)
    return centred


def _matmul_exact(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.int64]:
    """``a @ b`` of integer-valued arrays, exactly (float64 BLAS when it cannot round)."""
    if a.shape[-1] < _EXACT_TERMS:
        return np.rint(a @ b).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)  # pragma: no cover - 2**37 terms


def accumulate_linear(
    x_q: ArrayLike, x_zp: int, w_q: ArrayLike, w_zp: ArrayLike, *, int16_gemm: bool = False
) -> NDArray[np.int32]:
    """``acc[..., n] = sum_k (x_q[..., k] - x_zp) * (w_q[n, k] - w_zp[n])`` as int32.

    ``w_zp`` has one entry (per tensor) or one per output row. The sum is exact and
    then wrapped to int32, as the kernels' accumulators do; with ``int16_gemm`` the raw
    byte products of features (0, 1), (2, 3), ... saturate to int16 first (fbgemm
    without VNNI, see the module docstring).
    """
    if int16_gemm:
        xa = np.asarray(x_q).astype(np.int64)
        lead = xa.shape[:-1]
        acc = _gemm_int16(xa.reshape(-1, xa.shape[-1]), int(x_zp), np.asarray(w_q), w_zp)
        return _wrap_int32(acc).reshape(*lead, -1)
    x = _centred(x_q, x_zp, f64)
    w = np.asarray(w_q).astype(f64)
    w = w - np.asarray(w_zp, dtype=f64).reshape(-1, 1)
    lead = x.shape[:-1]
    acc = _matmul_exact(x.reshape(-1, x.shape[-1]), w.T)
    return _wrap_int32(acc).reshape(*lead, w.shape[0])


def _gemm_int16(x: NDArray[np.int64], x_zp: int, w_q: ArrayLike, w_zp: ArrayLike
                ) -> NDArray[np.int64]:
    """(M, K) raw uint8 rows times (N, K) raw int8 weights as fbgemm's AVX2 kernels do:
    the products of neighbours (0, 1), (2, 3), ... along K saturate to int16
    (``vpmaddubsw``), the pairs add up in int32, then the zero points come off through
    row and column sums."""
    w = np.asarray(w_q).astype(np.int64)
    k = w.shape[1]
    zw = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (w.shape[0],))
    acc = np.zeros((x.shape[0], w.shape[0]), np.int64)
    for t in range(0, k, 2):
        pair = x[:, t:t + 1] * w[:, t]
        if t + 1 < k:
            pair = pair + x[:, t + 1:t + 2] * w[:, t + 1]
        acc += np.clip(pair, -(2**15), 2**15 - 1)
    acc -= x_zp * w.sum(1)
    acc -= zw * (x.sum(1, keepdims=True) - x_zp * k)
    return acc


def _conv_int16(x_q: ArrayLike, x_zp: int, w_q: ArrayLike, w_zp: ArrayLike, stride: Geometry,
                padding: Geometry, dilation: Geometry, groups: int,
                pairs_in_tap: bool = False) -> NDArray[np.int64]:
    """A convolution as fbgemm's im2col GEMM without VNNI: per group, K runs over kernel
    taps (outermost) and the group's channels (innermost), pairs saturate to int16.
    ``pairs_in_tap`` (capped oneDNN): a pair never spans two taps; an odd channel count is
    padded with a zero weight (the last channel of each tap is alone)."""
    xa = np.asarray(x_q).astype(np.int64)
    wa = np.asarray(w_q).astype(np.int64)
    nd = wa.ndim - 2
    stride, padding, dilation = _conv_geometry(nd, stride, padding, dilation)
    xa = np.pad(xa, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=int(x_zp))
    n, c = xa.shape[:2]
    o = wa.shape[0]
    cg, og = c // groups, o // groups
    zw = np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (o,))
    cols = _im2col(xa, wa.shape[2:], stride, dilation)  # (n, *out, C, *k)
    out_sp = cols.shape[1:1 + nd]
    parts = []
    for g in range(groups):
        xg = np.moveaxis(cols[(slice(None),) * (1 + nd) + (slice(g * cg, (g + 1) * cg),)],
                         1 + nd, -1)  # (n, *out, *k, cg)
        wg4 = np.moveaxis(wa[g * og:(g + 1) * og], 1, -1)  # (og, *k, cg)
        if pairs_in_tap and cg % 2:
            xg = np.concatenate([xg, np.full(xg.shape[:-1] + (1,), int(x_zp), np.int64)], -1)
            wg4 = np.concatenate([wg4, np.zeros(wg4.shape[:-1] + (1,), np.int64)], -1)
        wg = wg4.reshape(og, -1)
        acc = _gemm_int16(xg.reshape(-1, wg.shape[1]), int(x_zp), wg, zw[g * og:(g + 1) * og])
        parts.append(acc.reshape(n, *out_sp, og))
    out: NDArray[np.int64] = np.moveaxis(np.concatenate(parts, axis=-1), -1, 1)
    return out


def _im2col(x: NDArray[_Num], ksize: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int]) -> NDArray[_Num]:
    """(N, C, *S) already padded -> view (N, *out, C, *k) of the receptive fields."""
    nd = len(ksize)
    span = [d * (k - 1) + 1 for k, d in zip(ksize, dilation, strict=True)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride) \
        + tuple(slice(None, None, d) for d in dilation)
    order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    fields: NDArray[_Num] = win[index].transpose(order)
    return fields


def _conv_geometry(ndim: int, stride: Geometry, padding: Geometry, dilation: Geometry
                   ) -> tuple[tuple[int, ...], ...]:
    def tup(v: Geometry, name: str) -> tuple[int, ...]:
        t = (int(v),) * ndim if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)
        if len(t) != ndim:
            raise ValueError(f"{name} needs {ndim} values, got {len(t)}")
        return t
    return tup(stride, "stride"), tup(padding, "padding"), tup(dilation, "dilation")


def _conv_sum(x: NDArray[np.float64], w: NDArray[np.float64], stride: Geometry,
              padding: Geometry, dilation: Geometry, groups: int, exact: bool
              ) -> NDArray[np.float64]:
    """Grouped N-d cross-correlation of float64 arrays by im2col + BLAS, chunked on N."""
    nd = w.ndim - 2
    stride, padding, dilation = _conv_geometry(nd, stride, padding, dilation)
    n, c = x.shape[:2]
    o = w.shape[0]
    if c != w.shape[1] * groups or o % groups:
        raise ValueError(f"input has {c} channels; weight {tuple(w.shape)} with groups="
                         f"{groups} needs {w.shape[1] * groups}")
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    cg, og = c // groups, o // groups
    per_image = max(1, int(np.prod(x.shape[1:])) * int(np.prod(w.shape[2:])))
    step = max(1, _CHUNK_ELEMENTS // per_image)
    outs = []
    for start in range(0, n, step):
        cols = _im2col(x[start:start + step], w.shape[2:], stride, dilation)
        out_sp = cols.shape[1:1 + nd]
        rows = cols.shape[0] * int(np.prod(out_sp))
        parts = []
        for g in range(groups):
            a = cols[(slice(None),) * (1 + nd) + (slice(g * cg, (g + 1) * cg),)]
            a = a.reshape(rows, -1)
            b = w[g * og:(g + 1) * og].reshape(og, -1)
            parts.append(_matmul_exact(a, b.T) if exact else a @ b.T)
        acc = np.concatenate(parts, axis=1).reshape(cols.shape[0], *out_sp, o)
        outs.append(np.moveaxis(acc, -1, 1))
    return np.concatenate(outs, axis=0)


def accumulate_conv(
    x_q: ArrayLike, x_zp: int, w_q: ArrayLike, w_zp: ArrayLike, *,
    stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1, groups: int = 1, int16_pairs: bool = False,
    conv_sum: ConvSum | None = None, int16_gemm: bool = False, pairs_in_tap: bool = False,
) -> NDArray[np.int32]:
    """Integer accumulator of a quantized N-d convolution, (N, O, *out), as int32.

    ``x_q`` is (N, C, *spatial), ``w_q`` (O, C/groups, *kernel). Zero padding pads the
    *centred* input with 0, i.e. the quantized input with its zero point, as torch does.

    ``int16_pairs``: fbgemm's depthwise kernel (``groups == C``, see
    :func:`qinspect.analyse.verify.kernels.fbgemm_depthwise`) multiplies the *raw* bytes
    ``x_q * w_q`` and adds the products of kernel taps (0, 1), (2, 3), ... in int16
    with saturation (``vpmaddubsw``) before widening to int32; the zero points are
    subtracted afterwards through row/column sums. With activations in the full 0..255
    range and large weights a pair can exceed 32767: this reproduces that clipping.

    ``int16_gemm``: fbgemm's im2col GEMM on a CPU without VNNI (see the module docstring);
    with ``pairs_in_tap``, oneDNN's capped kernels (kernel ``onednn_int16``): pairs of
    neighbouring channels within one kernel tap.

    ``conv_sum``: another implementation of :func:`_conv_sum` (same arguments; with
    ``exact`` it must return the exact integer sums, e.g. a float64 convolution, which
    cannot round below 2**37 terms of 8-bit products whatever its summation order).
    """
    if int16_pairs:
        return _wrap_int32(_depthwise_int16(x_q, x_zp, w_q, w_zp, stride, padding, dilation,
                                            groups))
    if int16_gemm:
        return _wrap_int32(_conv_int16(x_q, x_zp, w_q, w_zp, stride, padding, dilation,
                                       groups, pairs_in_tap))
    w = np.asarray(w_q).astype(f64)
    w = w - np.asarray(w_zp, dtype=f64).reshape((-1,) + (1,) * (w.ndim - 1))
    acc = (conv_sum or _conv_sum)(_centred(x_q, x_zp, f64), w, stride, padding, dilation,
                                  groups, True)
    return _wrap_int32(acc)


def _depthwise_int16(x_q: ArrayLike, x_zp: int, w_q: ArrayLike, w_zp: ArrayLike,
                     stride: Geometry, padding: Geometry, dilation: Geometry, groups: int
                     ) -> NDArray[np.int64]:
    xa = np.asarray(x_q).astype(np.int64)
    wa = np.asarray(w_q).astype(np.int64)
    nd = wa.ndim - 2
    n, c = xa.shape[:2]
    o = wa.shape[0]
    if groups != c or wa.shape[1] != 1 or o % c:
        raise ValueError("int16_pairs applies to depthwise convolutions (groups == channels)")
    stride, padding, dilation = _conv_geometry(nd, stride, padding, dilation)
    xa = np.pad(xa, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=int(x_zp))
    taps = int(np.prod(wa.shape[2:]))
    w = wa.reshape(o, taps)
    zw = np.asarray(w_zp, dtype=np.int64).reshape(-1)
    zw = np.repeat(zw, o) if zw.size == 1 else zw
    chan = (1, o) + (1,) * nd
    outs = []
    step = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(xa.shape[1:])) * taps * (o // c)))
    for start in range(0, n, step):
        cols = _im2col(xa[start:start + step], wa.shape[2:], stride, dilation)
        cols = np.moveaxis(cols, 1 + nd, 1)  # (n, C, *out, *k)
        cols = cols.reshape(cols.shape[:2 + nd] + (taps,))
        cols = np.repeat(cols, o // c, axis=1)  # (n, O, *out, taps)
        acc = np.zeros(cols.shape[:-1], np.int64)
        wk = w.reshape(chan + (taps,))
        for t in range(0, taps, 2):
            pair = cols[..., t] * wk[..., t]
            if t + 1 < taps:
                pair = pair + cols[..., t + 1] * wk[..., t + 1]
            acc += np.clip(pair, -(2**15), 2**15 - 1)
        acc -= w.sum(1).reshape(chan) * int(x_zp)
        acc -= zw.reshape(chan) * (cols.sum(-1) - int(x_zp) * taps)
        outs.append(acc)
    return np.concatenate(outs, axis=0)


def conv_float64(x: ArrayLike, w: ArrayLike, bias: ArrayLike | None = None, *,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1,
                 conv_sum: ConvSum | None = None) -> NDArray[np.float64]:
    """A float64 N-d convolution (cross-correlation, zero padding), for float domains."""
    wa = np.asarray(w, dtype=f64)
    out = (conv_sum or _conv_sum)(np.asarray(x, dtype=f64), wa, stride, padding, dilation,
                                  groups, False)
    if bias is not None:
        out = out + np.asarray(bias, dtype=f64).reshape((1, -1) + (1,) * (wa.ndim - 2))
    return out


# ----------------------------------------------------------------------- requantization


def _channels(v: ArrayLike, n: int, dtype: DTypeLike) -> NDArray[Any]:
    a = np.asarray(v, dtype=dtype).reshape(-1)
    if a.size == 1 and n != 1:
        a = np.repeat(a, n)
    if a.size != n:
        raise ValueError(f"{a.size} per-channel values for {n} channels")
    return a


def _sat_rint(v: NDArray[np.float32]) -> NDArray[np.int64]:
    """``cvtps2dq``: round half to even; NaN and values beyond int32 give INT32_MIN."""
    r = np.rint(v.astype(f64))
    bad = ~((r >= -(2.0**31)) & (r < 2.0**31))
    return np.where(bad, _INT32_MIN, np.where(bad, 0, r)).astype(np.int64)


def _bias_qint32(bias: NDArray[np.float32], sw: NDArray[np.float64], sx: float, per_channel: bool
                 ) -> NDArray[np.int64]:
    """torch's ``QuantizeBias``: float bias -> qint32 with scale w_scale x f32(x_scale)."""
    sxd = float(f32(sx))
    if per_channel:
        q = quantize_per_channel(bias, sw * sxd, np.zeros(sw.size, np.int64), 0, "qint32")
    else:
        q = quantize_per_tensor(bias, float(sw[0]) * sxd, 0, "qint32")
    return q.astype(np.int64)


def requantize(
    acc: ArrayLike, x_scale: float, w_scale: ArrayLike, bias: ArrayLike | None,
    out_scale: float, out_zp: int, *, kernel: str, relu: bool = False, axis: int = -1,
) -> NDArray[np.uint8]:
    """int32 accumulators -> quint8 outputs, as ``kernel`` computes them.

    ``axis`` is the output-channel axis of ``acc`` (-1 for linear, 1 for conv);
    ``w_scale`` has one entry (per-tensor weights) or one per channel; ``bias`` is
    the float bias (or ``None``). See the module docstring for the formulas.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    a = np.asarray(acc).astype(np.int64)
    ax = axis % a.ndim
    n = a.shape[ax]
    per_channel = np.asarray(w_scale).size > 1
    sw = _channels(w_scale, n, f64)
    shape = [1] * a.ndim
    shape[ax] = n

    def ch(v: NDArray[Any]) -> NDArray[Any]:
        return v.reshape(shape)

    b = None if bias is None else _channels(bias, n, f32)
    lo = out_zp if relu else QMIN
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if kernel == "fbgemm":
            atws = (f32(x_scale) * sw.astype(f32)).astype(f32)
            mult = (atws / f32(out_scale)).astype(f32)
            raw = _wrap_int32(a).astype(f32)
            if b is not None:
                raw = (raw + ch((b / atws).astype(f32))).astype(f32)
            v = (raw * ch(mult)).astype(f32)
            return np.clip(_sat_rint(v) + out_zp, lo, QMAX).astype(np.uint8)
        if kernel == "qnnpack":
            if b is not None:
                a = a + ch(_bias_qint32(b, sw, x_scale, per_channel))
            mult = ((sw.astype(f32) * f32(x_scale)).astype(f32)
                    * (f32(1.0) / f32(out_scale))).astype(f32)
            v = (_wrap_int32(a).astype(f32) * ch(mult)).astype(f32)
            return np.clip(_sat_rint(v) + out_zp, lo, QMAX).astype(np.uint8)
        if kernel == "onednn_int16":
            d = (_wrap_int32(a).astype(f32)
                 * ch((f32(x_scale) * sw.astype(f32)).astype(f32))).astype(f32)
        else:
            d = ((_wrap_int32(a).astype(f32) * f32(x_scale)).astype(f32)
                 * ch(sw.astype(f32))).astype(f32)
        if b is not None:
            d = (d + ch(b)).astype(f32)
        if relu:
            d = np.maximum(d, f32(0.0))
        v = ((d * f32(1.0 / f64(out_scale))).astype(f32) + f32(out_zp)).astype(f32)
        v = np.where(np.isnan(v), f32(QMIN), v)
        out: NDArray[np.uint8] = np.rint(np.clip(v, QMIN, QMAX)).astype(np.uint8)
    return out


def quantized_linear(
    x_q: ArrayLike, x_scale: float, x_zp: int, w_q: ArrayLike, w_scale: ArrayLike,
    w_zp: ArrayLike, bias: ArrayLike | None, out_scale: float, out_zp: int, *,
    kernel: str, relu: bool = False, int16_gemm: bool = False,
) -> NDArray[np.uint8]:
    """``torch.ops.quantized.linear`` (``linear_relu``) on quint8 input (..., K)."""
    acc = accumulate_linear(x_q, x_zp, w_q, w_zp, int16_gemm=int16_gemm)
    return requantize(acc, x_scale, w_scale, bias, out_scale, out_zp, kernel=kernel,
                      relu=relu, axis=-1)


def quantized_conv(
    x_q: ArrayLike, x_scale: float, x_zp: int, w_q: ArrayLike, w_scale: ArrayLike,
    w_zp: ArrayLike, bias: ArrayLike | None, out_scale: float, out_zp: int, *,
    kernel: str, relu: bool = False, stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, groups: int = 1,
    int16_pairs: bool = False, conv_sum: ConvSum | None = None, int16_gemm: bool = False,
) -> NDArray[np.uint8]:
    """``torch.ops.quantized.conv{1,2,3}d`` (``_relu``) with zero padding, (N, C, *S)."""
    acc = accumulate_conv(x_q, x_zp, w_q, w_zp, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, int16_pairs=int16_pairs,
                          conv_sum=conv_sum, int16_gemm=int16_gemm,
                          pairs_in_tap=kernel == "onednn_int16")
    return requantize(acc, x_scale, w_scale, bias, out_scale, out_zp, kernel=kernel,
                      relu=relu, axis=1)


# ----------------------------------------------------------------------- add


def _qnnp_add_params(a_scale: float, b_scale: float, out_scale: float
                     ) -> tuple[int, int, int]:
    """QNNPACK's add multipliers: (a_multiplier, b_multiplier, shift)."""
    aos = f32(f32(a_scale) / f32(out_scale))
    bos = f32(f32(b_scale) / f32(out_scale))
    if not (2.0**-14 <= max(aos, bos) < 2.0**8):
        raise ValueError("QNNPACK add needs input/output scale ratios in [2**-14, 2**8)")
    exponent = int(np.array(max(aos, bos), dtype=f32).view(np.uint32) >> 23) - 127
    shift = 21 - exponent
    multiplier = np.array((21 - exponent + 127) << 23, dtype=np.uint32).view(f32)
    am = int(np.rint(f32(aos * multiplier)))
    bm = int(np.rint(f32(bos * multiplier)))
    return am, bm, shift


def quantized_add(
    a_q: ArrayLike, a_scale: float, a_zp: int, b_q: ArrayLike, b_scale: float, b_zp: int,
    out_scale: float, out_zp: int, *, kernel: str, relu: bool = False,
) -> NDArray[np.uint8]:
    """``torch.ops.quantized.add`` (``add_relu``) of two quint8 tensors (broadcasting)."""
    a = np.asarray(a_q).astype(np.int64)
    b = np.asarray(b_q).astype(np.int64)
    if kernel == "qnnpack":
        am, bm, shift = _qnnp_add_params(a_scale, b_scale, out_scale)
        mask = (1 << shift) - 1
        acc = _wrap_int32(-(am * a_zp + bm * b_zp) + a * am + b * bm).astype(np.int64)
        remainder = (acc & mask) - (acc < 0)
        q = (acc >> shift) + (remainder > (mask >> 1)) + out_zp
        out: NDArray[np.uint8] = np.clip(q, out_zp if relu else QMIN, QMAX).astype(np.uint8)
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        da = _fma_f32(f32(a_scale), a.astype(f32), f32(f32(a_scale) * f32(-a_zp)))
        db = _fma_f32(f32(b_scale), b.astype(f32), f32(f32(b_scale) * f32(-b_zp)))
        c = (da + db).astype(f32)
        if relu:
            c = np.maximum(c, f32(0.0))
        v = (c * (f32(1.0) / f32(out_scale))).astype(f32)
    v = np.where(np.isnan(v) | (v > f32(2147483520.0)), f32(2147483520.0), v)
    return np.clip(_sat_rint(v) + out_zp, QMIN, QMAX).astype(np.uint8)


# ----------------------------------------------------------------------- dynamic


def choose_dynamic_qparams(x_min: float, x_max: float, reduce_range: bool,
                           qmin: int = QMIN, qmax: int = QMAX) -> tuple[float, int]:
    """torch's ``quant_utils::ChooseQuantizationParams`` (no sparsity, no power of two).

    Returns ``(scale, zero_point)``; the scale is a float64 that the kernels then use
    as float32. ``reduce_range`` halves the integer range (fbgemm: [0, 127]).
    """
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    lo = min(f32(x_min), f32(0.0))
    hi = max(f32(x_max), f32(0.0))
    scale = (f64(hi) - f64(lo)) / (qmax - qmin)
    if f32(scale) == 0 or not np.isfinite(f32(1.0) / f32(scale)):
        scale = 0.1
    if scale < f64(_SMALL_SCALE):
        original = scale
        scale = f64(_SMALL_SCALE)
        if lo == 0:
            hi = f32(scale * (qmax - qmin))
        elif hi == 0:
            lo = f32(-scale * (qmax - qmin))
        else:
            amplifier = f32(scale / original)
            lo, hi = f32(lo * amplifier), f32(hi * amplifier)
    from_min = qmin - f64(lo) / scale
    from_max = qmax - f64(hi) / scale
    err_min = abs(qmin) - abs(f64(lo) / scale)
    err_max = abs(qmax) - abs(f64(hi) / scale)
    initial = from_min if err_min < err_max else from_max
    if initial < qmin:
        zp = qmin
    elif initial > qmax:
        zp = qmax
    else:
        zp = int(np.rint(initial))
    return float(scale), zp


def dynamic_linear(
    x: ArrayLike, w_q: ArrayLike, w_scale: ArrayLike, w_zp: ArrayLike,
    bias: ArrayLike | None, *, kernel: str, reduce_range: bool = True, relu: bool = False,
    int16_gemm: bool = False,
) -> tuple[NDArray[np.float32], NDArray[np.uint8], float, int]:
    """``torch.ops.quantized.linear_dynamic`` on a float input (..., K).

    Returns ``(output, x_q, x_scale, x_zero_point)``: the float32 output and the
    input quantization the kernel chose for this call.
    """
    if kernel not in ("fbgemm", "qnnpack"):
        raise ValueError(f"dynamic linear has no {kernel!r} recipe (fbgemm, qnnpack)")
    xf = np.asarray(x, dtype=f32)
    lo = float(xf.min()) if xf.size else 0.0
    hi = float(xf.max()) if xf.size else 0.0
    scale, zp = choose_dynamic_qparams(lo, hi, reduce_range and kernel == "fbgemm")
    x_q = quantize_per_tensor(xf, scale, zp, "quint8")
    acc = accumulate_linear(x_q, zp, w_q, w_zp, int16_gemm=int16_gemm).astype(f32)
    n = acc.shape[-1]
    mult = (f32(scale) * _channels(w_scale, n, f64).astype(f32)).astype(f32)
    b = np.zeros(n, f32) if bias is None else _channels(bias, n, f32)
    with np.errstate(over="ignore", invalid="ignore"):
        if kernel == "fbgemm":
            out = _fma_f32(acc, mult, b)
        else:
            out = ((acc * mult).astype(f32) + b).astype(f32)
    if relu:
        out = np.maximum(out, f32(0.0))
    return out.astype(f32), np.asarray(x_q, np.uint8), scale, zp
