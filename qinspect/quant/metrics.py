"""Error metrics between a float reference and its quantized approximation (numpy).

All arithmetic is float64 regardless of the input dtype; every function returns a
Python ``float`` (or a small named tuple of floats).  ``reference`` and ``test``
must have the same shape.  Conventions for degenerate input are part of the
contract and are stated in each docstring; in short, *no elements* and *no error*
mean "perfect" (``sqnr_db = +inf``, errors ``0.0``, cosine ``1.0``), and NaN in the
inputs propagates to NaN in the error metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .dtypes import QDtype, qdtype

__all__ = [
    "LsbError",
    "clipped_fraction",
    "cosine_similarity",
    "error_in_lsb",
    "max_abs_error",
    "mean_abs_error",
    "saturated_fraction",
    "sqnr_db",
]


class LsbError(NamedTuple):
    """Absolute error in units of the quantization step (LSB) of each element's channel."""

    max: float
    mean: float


def _pair(reference: ArrayLike, test: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Both arrays as float64, checking that the shapes agree."""
    r = np.asarray(reference, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError(f"shape mismatch: reference {r.shape} vs test {t.shape}")
    return r, t


def _norm(v: NDArray[np.float64]) -> float:
    """Euclidean norm ``sqrt(sum(v**2))``, scaled by ``max|v|`` to avoid overflow."""
    if v.size == 0:
        return 0.0
    m = float(np.max(np.abs(v)))
    if m == 0.0 or not np.isfinite(m):
        return m
    return m * float(np.sqrt(np.sum(np.square(v / m))))


def sqnr_db(reference: ArrayLike, test: ArrayLike) -> float:
    """Signal-to-quantization-noise ratio in decibels.

    ``SQNR = 20 * log10(||ref||_2 / ||ref - test||_2)``  [dB]; higher is better,
    about 6.02 dB per bit for a well-used uniform quantizer.

    * error exactly zero (including empty arrays and ref == test == 0) -> ``+inf``;
    * reference all zeros but error non-zero -> ``-inf`` (no signal, only noise);
    * NaN anywhere -> NaN.
    """
    r, t = _pair(reference, test)
    noise = _norm(r - t)
    signal = _norm(r)
    if np.isnan(noise) or np.isnan(signal):
        return float("nan")
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(20.0 * (np.log10(signal) - np.log10(noise)))


def max_abs_error(reference: ArrayLike, test: ArrayLike) -> float:
    """``max_i |ref_i - test_i|`` in the units of the inputs; ``0.0`` for empty input."""
    r, t = _pair(reference, test)
    if r.size == 0:
        return 0.0
    return float(np.max(np.abs(r - t)))


def mean_abs_error(reference: ArrayLike, test: ArrayLike) -> float:
    """``mean_i |ref_i - test_i|`` in the units of the inputs; ``0.0`` for empty input."""
    r, t = _pair(reference, test)
    if r.size == 0:
        return 0.0
    return float(np.mean(np.abs(r - t)))


def cosine_similarity(reference: ArrayLike, test: ArrayLike) -> float:
    """``<ref, test> / (||ref||_2 * ||test||_2)`` over the flattened arrays (unitless).

    Clipped to ``[-1, 1]``.  Both vectors zero (or empty) -> ``1.0``; exactly one of
    them zero -> ``0.0``; NaN anywhere -> NaN.
    """
    r, t = _pair(reference, test)
    nr, nt = _norm(r.ravel()), _norm(t.ravel())
    if np.isnan(nr) or np.isnan(nt):
        return float("nan")
    if nr == 0.0 and nt == 0.0:
        return 1.0
    if nr == 0.0 or nt == 0.0:
        return 0.0
    dot = float(np.dot((r / nr).ravel(), (t / nt).ravel()))
    return float(np.clip(dot, -1.0, 1.0))


def _per_element(
    param: ArrayLike, shape: tuple[int, ...], axis: int | None, name: str
) -> NDArray[np.float64]:
    """Broadcast a per-tensor (``axis=None``) or per-channel parameter to ``shape``."""
    p = np.asarray(param, dtype=np.float64)
    if axis is None:
        if p.size != 1:
            raise ValueError(f"{name} must be a scalar when axis is None (got {p.size} values)")
        return p.reshape(())
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d array")
    ax = axis % ndim
    p = p.reshape(-1)
    if p.size != shape[ax]:
        raise ValueError(f"{name} has {p.size} values but axis {axis} has {shape[ax]} channels")
    view = [1] * ndim
    view[ax] = shape[ax]
    return p.reshape(view)


def error_in_lsb(
    reference: ArrayLike, test: ArrayLike, scale: ArrayLike, axis: int | None = None
) -> LsbError:
    """Absolute error measured in quantization steps of each element's channel.

    ``e_i = |ref_i - test_i| / scale_c(i)``  [LSB], returned as ``LsbError(max, mean)``.
    ``axis=None``: ``scale`` is one number; otherwise one scale per index of ``axis``.
    A correctly rounded, unclipped quantize/dequantize round trip has ``max <= 0.5``.
    Empty input -> ``(0.0, 0.0)``.  Scales must be positive.
    """
    r, t = _pair(reference, test)
    s = _per_element(scale, r.shape, axis, "scale")
    if np.any(~(s > 0)):
        raise ValueError("scale must be positive")
    if r.size == 0:
        return LsbError(0.0, 0.0)
    e = np.abs(r - t) / s
    return LsbError(float(np.max(e)), float(np.mean(e)))


CLIP_TOLERANCE_LSB = 1e-3


def clipped_fraction(
    x: ArrayLike,
    scale: ArrayLike,
    zero_point: ArrayLike,
    dtype: str | QDtype,
    axis: int | None = None,
    margin_lsb: float = 0.5,
) -> float:
    """Fraction (0..1) of real values the clamp to ``[qmin, qmax]`` actually clips.

    Channel ``c`` keeps values in
    ``[(qmin - zp_c - margin_lsb) * scale_c, (qmax - zp_c + margin_lsb) * scale_c]``
    (float64). With the default half-step margin, a value inside that interval quantizes
    with ordinary rounding error (at most 0.5 LSB) even when it lands on an edge; a value
    outside it (or NaN) loses more than rounding to the clamp. ``margin_lsb=0`` counts
    everything beyond the edges themselves. Zero points may be float (float-qparams
    embeddings). Empty input -> ``0.0``.
    """
    d = qdtype(dtype)
    v = np.asarray(x, dtype=np.float64)
    s = _per_element(scale, v.shape, axis, "scale")
    z = _per_element(zero_point, v.shape, axis, "zero_point")
    if v.size == 0:
        return 0.0
    lo = (d.qmin - z - margin_lsb) * s
    hi = (d.qmax - z + margin_lsb) * s
    # a value on a half-step bound (a symmetric per-channel maximum: scale = max / 127.5,
    # computed and stored in float32, so off by ~1e-5 steps) rounds to the edge with a
    # 0.5 LSB error, which is rounding, not clipping: the bounds get CLIP_TOLERANCE_LSB
    # (a thousandth of a step) of slack
    slack = CLIP_TOLERANCE_LSB * np.abs(s) if margin_lsb > 0 else 0.0
    inside = (v >= lo - slack) & (v <= hi + slack)
    return float(1.0 - np.count_nonzero(inside) / v.size)


def saturated_fraction(q: ArrayLike, dtype: str | QDtype) -> float:
    """Fraction (0..1) of integer values equal to ``qmin`` or ``qmax`` of ``dtype``.

    ``q`` holds unpacked integer values (one value per element, as returned by the
    ``quantize_*`` functions).  Empty input -> ``0.0``.
    """
    d = qdtype(dtype)
    a = np.asarray(q)
    if a.size == 0:
        return 0.0
    hits = np.count_nonzero((a == d.qmin) | (a == d.qmax))
    return float(hits / a.size)
