"""Affine (de)quantization in pure numpy, bit-exact with torch's x86-64 CPU kernels.

Every function reproduces one torch code path *including its float32 rounding
steps*; the docstrings give the exact formula.  Notation:

* ``f32(.)`` / ``f64(.)`` -- round to IEEE float32 / float64 (round-to-nearest-even);
* ``inv = f32(1 / f32(scale))`` -- torch multiplies by the float32 reciprocal of the
  float32-rounded scale; it never divides by the scale (``x / s`` and ``x * inv``
  differ in the last bit often enough to move ties);
* ``rint`` -- round half to even (``std::nearbyint``, ``lrintf``, ``cvtps2dq``);
* ``fma(a, b, c)`` -- ``a*b + c`` rounded once to float32.

The torch paths differ from each other, so the same ``(x, scale, zero_point)`` can
give different integers depending on how a tensor was produced:

=================================  =====================================================
torch path                         integer before clamping
=================================  =====================================================
per-tensor qint8/quint8 (fbgemm)   ``rint(fma(x, inv, zp))``
per-tensor qint32, per-channel     ``rint(f32(f32(x*inv) + zp))``
per-tensor quint4x2/quint2x4       ``lrint(f32(rint(f32(x*inv)) + zp))``
per-channel float qparams          ``(int)lrint(f32(f32(x*inv) + zp))`` (float zp)
fake-quant, integer zp             ``f32(zp + rint(f32(x*inv)))``  (rounds before zp)
fake-quant per-channel, float zp   ``lrint(fma(x, inv, zp))`` (AVX2/AVX512 ATen build)
quantized_decomposed (PT2E)        ``f32(rint(f32(x * f32(1/scale))) + zp)`` (1/scale f64)
=================================  =====================================================

Where the zero point is added before rounding, ties are broken on ``x/s + zp``;
where it is added after, on ``x/s`` -- with an odd ``zp`` those give different
integers for exact ``.5`` cases, so a QAT (fake-quant) model and its converted model
can disagree by one step.  Saturation of NaN, +-inf and huge inputs also differs
per path and is documented (and reproduced) per function.

Dequantization is ``f32(scale) * f32(q - zp)`` per tensor, but the per-channel
affine kernel multiplies in float64 by the float64 scale: ``f32(f64(f32(q) - zp) * scale)``.

Platform: formulas of the standard x86-64 CPU wheels (``USE_FBGEMM``), verified against
torch 2.13.0+cpu on an AVX-512 machine.  Two results depend on the CPU: 8-bit per-tensor
quantization uses an FMA only when fbgemm detects AVX2+FMA, and the float-zero-point
per-channel fake-quant is contracted to an FMA only in ATen's AVX2/AVX512 kernels (not
with ``ATEN_CPU_CAPABILITY=default``); both functions take ``fused=False`` for those
machines.  aarch64 builds use different (NEON / non-fbgemm) kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .dtypes import QDtype, qdtype

__all__ = [
    "dequantize_per_channel",
    "dequantize_per_channel_decomposed",
    "dequantize_per_channel_float_qparams",
    "dequantize_per_tensor",
    "dequantize_per_tensor_decomposed",
    "fake_quantize_per_channel",
    "fake_quantize_per_tensor",
    "quantize_per_channel",
    "quantize_per_channel_decomposed",
    "quantize_per_channel_float_qparams",
    "quantize_per_tensor",
    "quantize_per_tensor_decomposed",
]

# fbgemm's ``int32_float_max_val``: the largest float32 below INT32_MAX.
_FBGEMM_INT32_FLOAT_MAX = np.float32(2147483520.0)
_INT32_MIN = -(2**31)
_INT64_MIN = np.iinfo(np.int64).min
_TWO_63 = float(2**63)


# --------------------------------------------------------------------------- helpers


def _f32(x: ArrayLike) -> NDArray[np.float32]:
    """``x`` as a float32 array (torch's quantize kernels read float32 data)."""
    return np.asarray(x, dtype=np.float32)


def _inv_f32(scale: ArrayLike) -> NDArray[np.float32]:
    """``inv = f32(1 / f32(scale))``: float32 division of 1 by the float32 scale."""
    s = np.asarray(np.asarray(scale, dtype=np.float64), dtype=np.float32)
    with np.errstate(divide="ignore"):
        inv: NDArray[np.float32] = np.float32(1.0) / s
    return inv


def _fma_f32(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> NDArray[np.float32]:
    """Return ``f32(a*b + c)`` rounded once, like ``vfmadd`` on float32 lanes.

    ``a``, ``b`` are float32 values and ``c`` is exactly representable in float64
    (an integer or a float32 zero point).  ``a*b`` is exact in float64 (48 significant
    bits); the sum is computed in float64, its rounding error recovered with Knuth's
    TwoSum, and the float64 sum is then rounded *to odd* when inexact.  Rounding to
    odd with 53 bits followed by round-to-nearest to 24 bits is a correct rounding
    (Boldo & Melquiond), so the final cast equals a true fused multiply-add.
    """
    p, cc = np.broadcast_arrays(
        np.asarray(a, np.float64) * np.asarray(b, np.float64), np.asarray(c, np.float64)
    )
    shape = p.shape
    p, cc = p.reshape(-1), cc.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + cc
        bb = s - p
        err = (p - (s - bb)) + (cc - bb)
        even = (s.view(np.uint64) & np.uint64(1)) == 0
        fix = np.isfinite(s) & (err != 0) & even
        if fix.any():
            s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        out: NDArray[np.float32] = s.astype(np.float32).reshape(shape)
    return out


def _lrint(v: NDArray[np.floating]) -> NDArray[np.int64]:
    """``lrintf``/``(int64_t)`` of a float: out-of-range and NaN give INT64_MIN (x86)."""
    r = np.rint(v.astype(np.float64))
    ok = (r >= -_TWO_63) & (r < _TWO_63)
    out = np.where(ok, r, 0.0).astype(np.int64)
    return np.asarray(np.where(ok, out, _INT64_MIN), dtype=np.int64)


def _wrap_int32(v: NDArray[np.integer]) -> NDArray[np.int32]:
    """C conversion of an int64 to ``int``: keep the low 32 bits (two's complement)."""
    return np.asarray(v, dtype=np.int64).astype(np.int32)


def _to_int(v: ArrayLike, storage: np.dtype) -> NDArray[np.integer]:
    """x86 conversion of a float to an integer type, values already clamped.

    ``cvttss2si``/``cvttsd2si`` truncate, and give INT32_MIN (0x80000000) for NaN and
    for anything outside int32; narrowing to an 8-bit type keeps the low byte (0).
    """
    f = np.asarray(v, dtype=np.float64)
    bad = ~((f > -(2.0**31) - 1) & (f < 2.0**31))
    out = np.where(bad, _INT32_MIN, np.trunc(np.where(bad, 0.0, f)).astype(np.int64))
    return np.asarray(out, dtype=np.int64).astype(storage)


def _clamp(v: ArrayLike, d: QDtype | tuple[int, int]) -> NDArray[np.float64]:
    """``min(max(v, qmin), qmax)`` in float64 (NaN is left to the caller)."""
    lo, hi = (d.qmin, d.qmax) if isinstance(d, QDtype) else d
    return np.clip(np.asarray(v, dtype=np.float64), lo, hi)


def _quantized_dtype(
    dtype: str | QDtype, allowed: Sequence[str], fn: str, hint: str = ""
) -> QDtype:
    """Resolve ``dtype`` and reject dtypes the torch path does not implement."""
    d = qdtype(dtype)
    if d.name not in allowed:
        msg = f"{fn} does not support dtype {d.name!r} (supported: {', '.join(allowed)})"
        raise ValueError(msg + (f"; {hint}" if hint else ""))
    return d


def _check_zero_point(zp: ArrayLike, lo: int, hi: int) -> None:
    """torch rejects integer zero points outside ``[lo, hi]``."""
    z = np.asarray(zp)
    if z.size and (z.min() < lo or z.max() > hi):
        raise ValueError(f"zero_point out of range [{lo}, {hi}]: {z.min()}..{z.max()}")


def _channel_param(
    p: ArrayLike, ndim: int, axis: int, size: int, dtype: DTypeLike, name: str
) -> NDArray[Any]:
    """Reshape a per-channel parameter vector so that it broadcasts along ``axis``."""
    v = np.asarray(p, dtype=dtype).reshape(-1)
    if v.size != size:
        raise ValueError(f"{name} has {v.size} entries but the axis has {size} channels")
    shape = [1] * ndim
    shape[axis] = size
    return v.reshape(shape)


def _norm_axis(ndim: int, axis: int) -> int:
    """Validate ``axis`` (negative values count from the end, as in numpy)."""
    if ndim == 0:
        raise ValueError("per-channel quantization needs an array with at least one dimension")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d array")
    return axis % ndim


# --------------------------------------------------------------------------- per tensor

_QTENSOR_DTYPES = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")
_PER_CHANNEL_DTYPES = ("qint8", "quint8", "qint32")
_PLAIN_HINT = "plain integer dtypes (PT2E/torchao) use quantize_{}_decomposed"


def quantize_per_tensor(
    x: ArrayLike,
    scale: float,
    zero_point: int,
    dtype: str | QDtype,
    *,
    fused: bool = True,
) -> NDArray[np.integer]:
    """``torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()`` (unpacked).

    ``x`` is read as float32; ``scale`` (a double in torch) is used as ``f32(scale)``;
    ``inv = f32(1 / f32(scale))``.  Result dtype is ``qdtype(dtype).storage``; for the
    packed types one value per element (no packing).

    * ``qint8`` / ``quint8`` -- fbgemm ``QuantizeAvx2<T, LEGACY=true>``::

          t = fma(x, inv, f32(zp))           # _mm256_fmadd_ps, one float32 rounding
          q = clamp(rint(min(t, 2147483520)), qmin, qmax)

      The zero point is added before rounding, so ties are broken on ``x/s + zp``.
      NaN maps to ``qmax`` (``minps`` returns its second operand), +-inf saturate.
      ``fused=False`` gives fbgemm's scalar fallback for CPUs without AVX2/FMA (the
      ``qint32`` formula below, NaN -> 0); it is derived from the fbgemm source, as
      the AVX2 path cannot be switched off on a machine that has it.
    * ``qint32`` -- fbgemm scalar ``Quantize<int32_t, LEGACY=true>`` (no FMA)::

          q = clamp_f64(rint(f32(f32(x * inv) + f32(zp))), qmin, qmax)   # NaN -> INT32_MIN

      ``f32(zp)`` is inexact for ``|zp| > 2**24``.
    * ``quint4x2`` / ``quint2x4`` -- ``quantize_tensor_per_tensor_affine_sub_byte_cpu``::

          q = clamp(lrintf(f32(rint(f32(x * inv)) + f32(zp))), qmin, qmax)

      (``inv = 1`` when ``scale == 0``).  ``lrintf`` of NaN or of a value beyond
      int64 returns INT64_MIN, so NaN and huge positive inputs (e.g. ``1e30``,
      ``+inf``) quantize to ``qmin`` -- a torch quirk reproduced here.
    """
    d = _quantized_dtype(
        dtype, _QTENSOR_DTYPES, "quantize_per_tensor", _PLAIN_HINT.format("per_tensor")
    )
    zp = int(zero_point)
    _check_zero_point(zp, d.qmin, d.qmax)
    x32 = _f32(x)
    if d.bits == 8 and fused:
        return _fbgemm_avx2_legacy(x32, scale, zp, d)
    if d.bits in (8, 32):
        return _fbgemm_scalar_legacy(x32, scale, zp, d)
    return _sub_byte_per_tensor(x32, scale, zp, d)


def _fbgemm_avx2_legacy(x32: NDArray[np.float32], scale: float, zp: int, d: QDtype
                        ) -> NDArray[np.integer]:
    """fbgemm AVX2 8-bit path: ``clamp(rint(min(fma(x, inv, zp), 2147483520)))``."""
    t = _fma_f32(x32, _inv_f32(scale), float(zp))
    t = np.where(np.isnan(t) | (t > _FBGEMM_INT32_FLOAT_MAX), _FBGEMM_INT32_FLOAT_MAX, t)
    return _clamp(np.rint(t), d).astype(d.storage)


def _fbgemm_scalar_legacy(x32: NDArray[np.float32], scale: float, zp: int, d: QDtype
                          ) -> NDArray[np.integer]:
    """fbgemm scalar LEGACY path: ``clamp_f64(rint(f32(f32(zp) + f32(x*inv))))``."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = x32 * _inv_f32(scale)
        v = np.rint(np.float32(zp) + t)
    return _to_int(_clamp(v, d), d.storage)


def _sub_byte_per_tensor(x32: NDArray[np.float32], scale: float, zp: int, d: QDtype
                         ) -> NDArray[np.integer]:
    """Sub-byte per-tensor path: ``clamp(lrintf(f32(rint(f32(x*inv)) + f32(zp))))``."""
    s = np.float32(scale)
    inv = np.float32(1.0) if s == 0 else _inv_f32(s)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(x32 * inv) + np.float32(zp)
    return _clamp(_lrint(v), d).astype(d.storage)


def dequantize_per_tensor(q: ArrayLike, scale: float, zero_point: int) -> NDArray[np.float32]:
    """``.dequantize()`` of a per-tensor quantized tensor (fbgemm ``Dequantize``)::

        out = f32(scale) * f32(int32(q - zp))

    one float32 multiply; ``q - zp`` is int32 arithmetic (wraps for extreme qint32
    values, as in torch).  The sub-byte kernel computes ``(f32(q) - f32(zp)) * f32(scale)``
    which is the same value for 2/4-bit data.
    """
    diff = _wrap_int32(np.asarray(q, dtype=np.int64) - int(zero_point))
    with np.errstate(over="ignore"):
        out: NDArray[np.float32] = diff.astype(np.float32) * np.float32(scale)
    return out


# --------------------------------------------------------------------------- per channel


def quantize_per_channel(
    x: ArrayLike,
    scales: ArrayLike,
    zero_points: ArrayLike,
    axis: int,
    dtype: str | QDtype,
) -> NDArray[np.integer]:
    """``torch.quantize_per_channel(x, scales, zero_points, axis, dtype).int_repr()``.

    Integer zero points, ``dtype`` in ``qint8 / quint8 / qint32`` (torch has no
    per-channel-affine kernel for the packed types).  torch keeps ``scales`` as float64
    and ``zero_points`` as int64, but the kernel (``quantize_val``, fbgemm's scalar
    ``Quantize``, element by element) works in float32 and without FMA::

        inv = f32(1 / f32(scale[c]))
        q   = clamp_f64(rint(f32(f32(x * inv) + f32(zp[c]))), qmin, qmax)

    The zero point is added before rounding, as in the per-tensor path, but the two
    roundings (product, then sum) can differ from the per-tensor FMA by one step.
    NaN becomes INT32_MIN for qint32 and 0 for the 8-bit types.
    """
    d = _quantized_dtype(
        dtype, _PER_CHANNEL_DTYPES, "quantize_per_channel", _PLAIN_HINT.format("per_channel")
    )
    x32 = _f32(x)
    ax = _norm_axis(x32.ndim, axis)
    n = x32.shape[ax]
    zp = _channel_param(zero_points, x32.ndim, ax, n, np.int64, "zero_points")
    _check_zero_point(zp, d.qmin, d.qmax)
    inv = _inv_f32(_channel_param(scales, x32.ndim, ax, n, np.float64, "scales"))
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(x32 * inv + zp.astype(np.float32))
    return _to_int(_clamp(v, d), d.storage)


def dequantize_per_channel(
    q: ArrayLike, scales: ArrayLike, zero_points: ArrayLike, axis: int
) -> NDArray[np.float32]:
    """``.dequantize()`` of a ``per_channel_affine`` tensor (float64 scales)::

        out = f32( f64(f32(q) - f32(zp[c])) * scale[c] )

    The subtraction is float32, the multiplication is float64 with the float64
    scale, then rounded to float32 -- *not* the same as ``f32(scale) * (q - zp)``.
    """
    qa = np.asarray(q)
    ax = _norm_axis(qa.ndim, axis)
    n = qa.shape[ax]
    zp = _channel_param(zero_points, qa.ndim, ax, n, np.int64, "zero_points")
    sc = _channel_param(scales, qa.ndim, ax, n, np.float64, "scales")
    out = np.empty(qa.shape, np.float32)
    # Blocks of channels keep the float64 temporaries in cache (one pass instead of four
    # over a large weight). For 8/16-bit integers f32(q) - f32(zp) is exact, so it equals
    # the float64 difference; wider values keep the float32 subtraction.
    small = qa.dtype.kind in "iub" and qa.dtype.itemsize <= 2 \
        and bool(np.all(np.abs(zp) < 2**23))
    qm, om = np.moveaxis(qa, ax, 0), np.moveaxis(out, ax, 0)
    zm, sm = np.moveaxis(zp, ax, 0), np.moveaxis(sc, ax, 0)
    step = max(1, _DEQUANT_BLOCK // max(1, qa.size // max(n, 1)))
    for lo in range(0, n, step):
        rows = slice(lo, lo + step)
        if small:
            d = np.subtract(qm[rows], zm[rows], dtype=np.float64)
        else:
            d = (qm[rows].astype(np.float32) - zm[rows].astype(np.float32)).astype(np.float64)
        d *= sm[rows]
        om[rows] = d
    return out


_DEQUANT_BLOCK = 1 << 18
"""Elements per block of :func:`dequantize_per_channel` (2 MB of float64)."""


_FLOAT_QPARAMS_DTYPES = ("quint8", "qint8", "quint4x2", "quint2x4")


def quantize_per_channel_float_qparams(
    x: ArrayLike,
    scales: ArrayLike,
    zero_points: ArrayLike,
    axis: int,
    dtype: str | QDtype,
) -> NDArray[np.integer]:
    """``torch.quantize_per_channel`` with float zero points (``per_channel_affine_float_qparams``).

    Used for weight-only embeddings (``quint8``, ``quint4x2``; also ``quint2x4`` and
    ``qint8``).  torch converts ``scales`` and ``zero_points`` to float32 and calls
    ``quantize_val_float_qparams`` (no FMA)::

        inv = 1 if f32(scale[c]) == 0 else f32(1 / f32(scale[c]))
        q   = clamp((int) lrintf(f32(f32(x * inv) + f32(zp[c]))), qmin, qmax)

    Note the zero point is added before rounding.  The ``(int)`` cast keeps the low
    32 bits of the ``long``: NaN and values beyond int64 give 0 (then clamped), and a
    value such as ``2**32 + 5`` wraps to 5 -- torch quirks reproduced here.
    """
    d = _quantized_dtype(dtype, _FLOAT_QPARAMS_DTYPES, "quantize_per_channel_float_qparams")
    x32 = _f32(x)
    ax = _norm_axis(x32.ndim, axis)
    n = x32.shape[ax]
    sc = _channel_param(scales, x32.ndim, ax, n, np.float64, "scales").astype(np.float32)
    zp = _channel_param(zero_points, x32.ndim, ax, n, np.float64, "zero_points")
    inv = np.where(sc == 0, np.float32(1.0), _inv_f32(sc)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = x32 * inv + zp.astype(np.float32)
    return _clamp(_wrap_int32(_lrint(v)), d).astype(d.storage)


def dequantize_per_channel_float_qparams(
    q: ArrayLike, scales: ArrayLike, zero_points: ArrayLike, axis: int
) -> NDArray[np.float32]:
    """``.dequantize()`` of a ``per_channel_affine_float_qparams`` tensor, all float32::

        out = f32( f32(f32(q) - f32(zp[c])) * f32(scale[c]) )

    (``dequantize_per_channel_affine_kernel<float, float>``; no float64 step here.)
    """
    qa = np.asarray(q)
    ax = _norm_axis(qa.ndim, axis)
    n = qa.shape[ax]
    zp = _channel_param(zero_points, qa.ndim, ax, n, np.float64, "zero_points")
    sc = _channel_param(scales, qa.ndim, ax, n, np.float64, "scales")
    with np.errstate(over="ignore"):
        return (qa.astype(np.float32) - zp.astype(np.float32)) * sc.astype(np.float32)


# --------------------------------------------------------------------------- fake quant


def _check_qrange(quant_min: int, quant_max: int) -> tuple[int, int]:
    """torch requires ``quant_min <= quant_max``."""
    lo, hi = int(quant_min), int(quant_max)
    if lo > hi:
        raise ValueError(f"quant_min {lo} must be <= quant_max {hi}")
    return lo, hi


def fake_quantize_per_tensor(
    x: ArrayLike, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> NDArray[np.float32]:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zp, quant_min, quant_max)``.

    float32 input; ``fake_quantize_tensor_cachemask`` kernel::

        inv = f32(1 / f32(scale))
        t   = f32(f32(zp) + rint(f32(x * inv)))     # zp added after rounding, float32
        q   = (int64) fmin(fmax(t, quant_min), quant_max)   # fmax drops NaN -> quant_min
        out = f32(f32(q - zp) * f32(scale))

    The zero point is added *after* rounding, whereas the real quantizers
    (``quantize_per_tensor`` / ``quantize_per_channel``) add it before: for an odd
    ``zp`` an exact tie rounds the other way, so a QAT model and its converted model
    can disagree by one step (and by FMA-vs-two-roundings differences).
    """
    lo, hi = _check_qrange(quant_min, quant_max)
    zp = int(zero_point)
    sc = np.float32(scale)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.float32(zp) + np.rint(_f32(x) * _inv_f32(sc))
        q = _clamp(np.where(np.isnan(t), lo, t), (lo, hi)).astype(np.int64)
        out: NDArray[np.float32] = (q - zp).astype(np.float32) * sc
    return out


def fake_quantize_per_channel(
    x: ArrayLike,
    scales: ArrayLike,
    zero_points: ArrayLike,
    axis: int,
    quant_min: int,
    quant_max: int,
    *,
    fused: bool = True,
) -> NDArray[np.float32]:
    """``torch.fake_quantize_per_channel_affine(x, scales, zero_points, axis, qmin, qmax)``.

    float32 input; ``scales`` are used as float32 (torch requires a float32 tensor).
    The kernel branches on the zero-point dtype, and so does this function:

    * integer zero points (torch: int32)::

          t   = f32(f32(zp) + rint(f32(x * inv)))
          q   = clamp((int64) t, qmin, qmax)           # NaN/huge -> INT64_MIN -> qmin
          out = f32( f64(q - zp) * f64(f32(scale)) )

    * floating zero points (QAT of float-qparams embeddings; float32 ``zp``)::

          q   = clamp(lrintf(fma(x, inv, zp)), qmin, qmax)          # NaN/huge -> qmin
          out = f32( (f64(q) - f64(zp)) * f64(f32(scale)) )

      torch's source reads ``lrintf(zero_point + self * inv_scale)``; GCC contracts it
      to an FMA in ATen's AVX2/AVX512 kernels (the ones any x86-64 CPU with AVX2
      uses).  ``fused=False`` reproduces ``ATEN_CPU_CAPABILITY=default`` builds, which
      round twice: ``lrintf(f32(f32(x * inv) + zp))``.
    """
    lo, hi = _check_qrange(quant_min, quant_max)
    x32 = _f32(x)
    ax = _norm_axis(x32.ndim, axis)
    n = x32.shape[ax]
    zp_raw = np.asarray(zero_points)
    is_float_zp = np.issubdtype(zp_raw.dtype, np.floating)
    zp_dtype = np.float32 if is_float_zp else np.int64
    zp = _channel_param(zp_raw, x32.ndim, ax, n, zp_dtype, "zero_points")
    sc = _channel_param(scales, x32.ndim, ax, n, np.float64, "scales").astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        t = x32 * _inv_f32(sc)
        if is_float_zp:
            q = _lrint(_fma_f32(x32, _inv_f32(sc), zp) if fused else t + zp)
        else:
            q = _lrint(zp.astype(np.float32) + np.rint(t))
        qc = _clamp(q, (lo, hi))
        return ((qc - zp.astype(np.float64)) * sc.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------- PT2E / decomposed

_DECOMPOSED_DTYPES = ("int8", "uint8", "int32", "int4", "uint4")


def _decomposed_range(
    dtype: str | QDtype, quant_min: int | None, quant_max: int | None, fn: str
) -> tuple[QDtype, int, int]:
    """Resolve dtype and the (optional) custom range of a decomposed op."""
    d = _quantized_dtype(dtype, _DECOMPOSED_DTYPES, fn)
    lo = d.qmin if quant_min is None else int(quant_min)
    hi = d.qmax if quant_max is None else int(quant_max)
    if not d.qmin <= lo <= hi <= d.qmax:
        raise ValueError(f"quant range [{lo}, {hi}] invalid for {d.name} [{d.qmin}, {d.qmax}]")
    return d, lo, hi


def quantize_per_tensor_decomposed(
    x: ArrayLike,
    scale: float,
    zero_point: int,
    dtype: str | QDtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> NDArray[np.integer]:
    """``torch.ops.quantized_decomposed.quantize_per_tensor`` (PT2E ``convert_pt2e``).

    Python-level op: ``inv_scale = 1.0 / scale`` is a *float64* division, the tensor
    multiply then uses ``f32(inv_scale)``::

        v = clamp(f32(rint(f32(x * f32(1/scale))) + f32(zp)), f32(quant_min), f32(quant_max))
        q = (T) v

    ``quant_min``/``quant_max`` default to the dtype range (``int4``/``uint4`` mean
    an 8-bit carrier restricted to 4-bit values, as torchao does).  The clamp bounds
    are float32 too, so for int32 ``f32(2**31 - 1) = 2**31`` and saturated values
    convert to INT32_MIN; NaN converts to INT32_MIN (int32) or 0 (8-bit).  Both are
    torch's behaviour on x86 and are reproduced.
    """
    d, lo, hi = _decomposed_range(dtype, quant_min, quant_max, "quantize_per_tensor")
    ct = np.float32
    inv = ct(1.0 / float(scale))
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(_f32(x) * inv) + ct(int(zero_point))
    return _to_int(np.clip(v, ct(lo), ct(hi)), d.storage)


def dequantize_per_tensor_decomposed(
    q: ArrayLike, scale: float, zero_point: int
) -> NDArray[np.float32]:
    """``torch.ops.quantized_decomposed.dequantize_per_tensor``, all float32::

        out = f32( f32(f32(q) - f32(zp)) * f32(scale) )

    (``(input.to(float32) - zero_point) * scale``; differs from
    :func:`dequantize_per_tensor` only for int32 values beyond ``2**24``.)
    """
    with np.errstate(over="ignore"):
        qf = np.asarray(q).astype(np.float32)
        out: NDArray[np.float32] = (qf - np.float32(int(zero_point))) * np.float32(scale)
    return out


def _decomposed_compute_dtype(scales: ArrayLike) -> type:
    """torch type promotion: float64 scales promote the whole computation to float64."""
    return np.float64 if np.asarray(scales).dtype == np.float64 else np.float32


def quantize_per_channel_decomposed(
    x: ArrayLike,
    scales: ArrayLike,
    zero_points: ArrayLike,
    axis: int,
    dtype: str | QDtype,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> NDArray[np.integer]:
    """``torch.ops.quantized_decomposed.quantize_per_channel`` (PT2E).

    Tensor ops with torch type promotion; with float32 ``scales`` (the usual case)
    everything is float32::

        q = clamp(f32(rint(f32(x * f32(1 / scale[c]))) + f32(zp[c])), quant_min, quant_max)

    With float64 ``scales`` the same expression is evaluated in float64 (so the
    int32 saturation quirk of :func:`quantize_per_tensor_decomposed` disappears).
    Pass the scales with the dtype they have in the checkpoint.
    """
    d, lo, hi = _decomposed_range(dtype, quant_min, quant_max, "quantize_per_channel")
    ct = _decomposed_compute_dtype(scales)
    x32 = _f32(x)
    ax = _norm_axis(x32.ndim, axis)
    n = x32.shape[ax]
    sc = _channel_param(scales, x32.ndim, ax, n, ct, "scales")
    zp = _channel_param(zero_points, x32.ndim, ax, n, np.int64, "zero_points")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        inv = ct(1.0) / sc
        v = np.rint(x32.astype(ct) * inv) + zp.astype(ct)
    return _to_int(np.clip(v, ct(lo), ct(hi)), d.storage)


def dequantize_per_channel_decomposed(
    q: ArrayLike, scales: ArrayLike, zero_points: ArrayLike | None, axis: int
) -> NDArray[np.float32]:
    """``torch.ops.quantized_decomposed.dequantize_per_channel``::

        out = f32( f32(q - zp[c]) * scale[c] )     # q - zp exact in int64

    computed in float32 for float32 ``scales`` (float64, then rounded, for float64
    scales).  ``zero_points=None`` means ``q * scale``.
    """
    qa = np.asarray(q)
    ct = _decomposed_compute_dtype(scales)
    ax = _norm_axis(qa.ndim, axis)
    n = qa.shape[ax]
    sc = _channel_param(scales, qa.ndim, ax, n, ct, "scales")
    diff = qa.astype(np.int64)
    if zero_points is not None:
        diff = diff - _channel_param(zero_points, qa.ndim, ax, n, np.int64, "zero_points")
    with np.errstate(over="ignore"):
        out: NDArray[np.float32] = (diff.astype(ct) * sc).astype(np.float32)
    return out


# --------------------------------------------------------------------------- torchao block-wise

_ZERO_POINT_DOMAINS = ("int", "none", "float")


def block_grid(shape: Sequence[int], block_size: Sequence[int]) -> tuple[int, ...]:
    """Shape of the grid of blocks (one scale each) of a ``shape`` tensor cut into
    ``block_size`` blocks, as torchao's ``_get_reduction_params`` cuts it: a dimension whose
    block is 1 keeps one scale per index, one whose block equals the dimension gets one."""
    shape, block = tuple(int(n) for n in shape), tuple(int(b) for b in block_size)
    if len(shape) != len(block):
        raise ValueError(f"block_size {list(block)} does not match a {len(shape)}-d tensor")
    grid = []
    for n, b in zip(shape, block, strict=True):
        if b < 1 or n % min(b, n):
            raise ValueError(f"block_size {list(block)} does not tile shape {list(shape)}")
        grid.append(n // min(b, n))
    return tuple(grid)


def expand_blocks(param: ArrayLike, shape: Sequence[int], block_size: Sequence[int]
                  ) -> NDArray[Any]:
    """A per-block parameter (``scale``/``zero_point``, any shape with one value per block,
    row-major over the grid) broadcast to one value per element of ``shape``."""
    grid = block_grid(shape, block_size)
    p = np.asarray(param)
    if p.size != int(np.prod(grid, dtype=np.int64)):
        raise ValueError(f"{p.size} parameters for a grid of {list(grid)} blocks")
    p = p.reshape(grid)
    for ax, (n, g) in enumerate(zip(shape, grid, strict=True)):
        if g != n:
            p = np.repeat(p, n // g, axis=ax)
    return p


def dequantize_blockwise(
    q: ArrayLike,
    scale: ArrayLike,
    zero_point: ArrayLike | None,
    block_size: Sequence[int],
    zero_point_domain: str = "int",
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> NDArray[np.floating]:
    """torchao ``dequantize_affine`` (``quant_primitives``), float32 output.

    One ``scale`` (and ``zero_point``) per block of ``block_size`` elements (``(1, K)``:
    per row; ``(1, 32)``: per group of 32 along a row); ``scale`` holds one value per
    block in row-major order of the block grid, in any shape (torchao keeps ``(N, 1)`` or
    ``(N, K/32)``). What ``Int8Tensor.dequantize()`` and ``IntxUnpackedToInt8Tensor
    .dequantize()`` (int4 in int8 bytes) compute, by ``zero_point_domain``:

    * ``"int"`` (``ZeroPointDomain.INT``, every ``MappingType``; the default)::

          out = f32( f32(f32(q) - f32(zp)) * scale )      # zp None: f32(q) * scale

      the multiply runs in torch's promoted dtype: float32 for float32 (or narrower)
      scales, float64 for float64 scales (then rounded to float32);
    * ``"none"`` (``_dequantize_affine_no_zero_point``): ``f32(f32(q) * scale)``;
    * ``"float"`` (tinygemm, ``_dequantize_affine_tinygemm``; float zero point)::

          mid = (quant_max + quant_min + 1) / 2
          out = f32( f32(f32(q - mid) * f32(scale)) + f32(zp) )

    No clamping: dequantization reads the integers as stored. ``quant_min``/``quant_max``
    matter only for the tinygemm mid point.
    """
    if zero_point_domain not in _ZERO_POINT_DOMAINS:
        raise ValueError(f"zero_point_domain {zero_point_domain!r}: use one of "
                         f"{', '.join(_ZERO_POINT_DOMAINS)}")
    qa = np.asarray(q)
    sc_raw = np.asarray(scale)
    sc = expand_blocks(sc_raw, qa.shape, block_size)
    zp = None if zero_point is None or np.asarray(zero_point).size == 0 else \
        expand_blocks(zero_point, qa.shape, block_size)
    ct = np.float64 if sc_raw.dtype == np.float64 else np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        if zero_point_domain == "float":
            if quant_min is None or quant_max is None:
                raise ValueError("zero_point_domain 'float' needs quant_min and quant_max")
            mid = (int(quant_max) + int(quant_min) + 1) / 2
            d = (qa.astype(np.float64) - mid).astype(np.float32)
            out = d * sc.astype(np.float32)
            if zp is not None:
                out = out + zp.astype(np.float32)
            return out.astype(np.float32)
        d = qa.astype(np.float32)
        if zp is not None and zero_point_domain == "int":
            d = d - zp.astype(np.float32)
        return (d.astype(ct) * sc.astype(ct)).astype(np.float32)
