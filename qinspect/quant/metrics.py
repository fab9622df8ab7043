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
    "PairStats",
    "channel_sqnr_db",
    "clipped_fraction",
    "cosine_similarity",
    "error_in_lsb",
    "max_abs_error",
    "mean_abs_error",
    "pair_stats",
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


def channel_sqnr_db(reference: ArrayLike, test: ArrayLike, axis: int = 0) -> np.ndarray:
    """:func:`sqnr_db` of each slice along ``axis`` (each output channel), in dB.

    Same conventions as :func:`sqnr_db` per slice (+inf exact, -inf no signal, NaN);
    walked in row blocks so no full-size float64 temporary is made."""
    r_all, t_all = np.asarray(reference), np.asarray(test)
    if r_all.shape != t_all.shape:
        raise ValueError(f"shape mismatch: reference {r_all.shape} vs test {t_all.shape}")
    if r_all.ndim == 0:
        return np.array([sqnr_db(r_all, t_all)])
    r_all, t_all = np.moveaxis(r_all, axis, 0), np.moveaxis(t_all, axis, 0)
    out = np.full(r_all.shape[0], np.inf)  # empty channels: no error, as sqnr_db says
    for lo, hi in _blocks(r_all):
        r = r_all[lo:hi].reshape(hi - lo, -1).astype(np.float64)
        e = r - t_all[lo:hi].reshape(hi - lo, -1).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            signal, noise = np.sum(r * r, axis=1), np.sum(e * e, axis=1)
            db = 10.0 * (np.log10(signal) - np.log10(noise))
        db[noise == 0.0] = np.inf
        db[(signal == 0.0) & (noise > 0.0)] = -np.inf
        db[np.isnan(signal) | np.isnan(noise)] = np.nan
        for i in np.flatnonzero(~np.isfinite(signal) | ~np.isfinite(noise)):
            db[i] = sqnr_db(r[i], r[i] - e[i])  # overflowing sums: the scaled norm
        out[lo:hi] = db
    return out


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
    return float((v.size - np.count_nonzero(inside)) / v.size)


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


class PairStats(NamedTuple):
    """Every metric of one (reference, test) pair, from a single streaming pass.

    Equal (to float64 rounding of the sums) to the separate functions of this module,
    which stay the reference definitions. ``max_error_lsb``, ``mean_error_lsb`` and
    ``clipped_fraction`` are ``None`` when no scale was given. ``reference_energy`` and
    ``error_energy`` are ``sum(ref^2)`` and ``sum((ref - test)^2)``, for model-level SQNR.
    """

    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float
    max_error_lsb: float | None
    mean_error_lsb: float | None
    clipped_fraction: float | None
    reference_energy: float
    error_energy: float


CHUNK_ELEMENTS = 1 << 19  # 4 MiB of float64 per temporary: stays in cache-sized blocks


def pair_stats(
    reference: ArrayLike,
    test: ArrayLike,
    scale: ArrayLike | None = None,
    zero_point: ArrayLike | None = None,
    dtype: str | QDtype | None = None,
    axis: int | None = None,
) -> PairStats:
    """SQNR, abs/LSB errors, cosine and clipping of a pair in one pass over row blocks.

    The separate functions each convert whole arrays to float64 and make several full
    temporaries; for a 4096x8192 weight that is ~30 passes over 268 MB. Here the arrays
    are walked in blocks along the channel axis (moved to the front) with float64
    temporaries of at most ``CHUNK_ELEMENTS``. Falls back to the separate functions when
    the sums of squares overflow float64 (values beyond ~1e154).
    """
    r_all, t_all = np.asarray(reference), np.asarray(test)
    if r_all.shape != t_all.shape:
        raise ValueError(f"shape mismatch: reference {r_all.shape} vs test {t_all.shape}")
    grid = (scale, zero_point, dtype) if scale is not None and zero_point is not None \
        and dtype is not None else None
    with_scale = grid is not None
    if axis is not None and r_all.ndim:
        r_all, t_all = np.moveaxis(r_all, axis, 0), np.moveaxis(t_all, axis, 0)
    acc = _Accumulator(with_scale)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below
        _accumulate(acc, r_all, t_all, grid, axis)
        stats = acc.result(r_all.size)
    if not np.isfinite(stats.reference_energy) or not np.isfinite(stats.error_energy):
        return _pair_stats_separately(reference, test, scale, zero_point, dtype, axis)
    return stats


def _accumulate(acc: _Accumulator, r_all: np.ndarray, t_all: np.ndarray,
                grid: tuple[ArrayLike, ArrayLike, str | QDtype] | None,
                axis: int | None) -> None:
    """Add ``r_all``/``t_all`` to ``acc`` block by block; ``grid``: (scale, zero point,
    dtype) of the test side's quantization, or None (no LSB/clipping numbers)."""
    for lo, hi in _blocks(r_all):
        rows = slice(lo, hi)
        s = z = d = None
        if grid is not None:
            s, z = _block_params(grid[0], grid[1], axis, rows, r_all.ndim)
            d = qdtype(grid[2])
        acc.add(r_all[rows] if r_all.ndim else r_all, t_all[rows] if t_all.ndim else t_all,
                s, z, d)


def _blocks(a: np.ndarray) -> list[tuple[int, int]]:
    if a.ndim == 0 or a.size == 0:
        return [(0, 1)] if a.ndim == 0 else []
    per_row = max(1, a.size // a.shape[0])
    step = max(1, CHUNK_ELEMENTS // per_row)
    return [(i, min(i + step, a.shape[0])) for i in range(0, a.shape[0], step)]


def _block_params(scale: ArrayLike, zero_point: ArrayLike, axis: int | None, rows: slice,
                  ndim: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    z = np.asarray(zero_point, dtype=np.float64).reshape(-1)
    if axis is None:
        return s.reshape(()), z.reshape(())
    view = (-1,) + (1,) * (ndim - 1)
    return s[rows].reshape(view), z[rows].reshape(view)


class _Accumulator:
    """Running sums of one pass; ``add`` takes float64-convertible blocks."""

    def __init__(self, with_scale: bool) -> None:
        self.with_scale = with_scale
        self.rr = self.tt = self.rt = self.ee = self.abs_sum = self.lsb_sum = 0.0
        self.abs_max = self.lsb_max = 0.0
        self.clipped = 0
        self.nan = False

    def add(self, r: np.ndarray, t: np.ndarray, s: np.ndarray | None, z: np.ndarray | None,
            d: QDtype | None) -> None:
        """One block: 2 conversions, 1 difference, 4 dot products, 1 abs and row-wise
        reductions (no other block-sized temporary)."""
        r = np.asarray(r, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        e = np.subtract(r, t)
        self.rr += _dot(r, r)
        self.tt += _dot(t, t)
        self.rt += _dot(r, t)
        self.ee += _dot(e, e)
        np.abs(e, out=e)
        rows = e.reshape(e.shape[0] if e.ndim else 1, -1)
        row_max = rows.max(axis=1) if e.size else np.zeros(0)
        row_sum = rows.sum(axis=1) if e.size else np.zeros(0)
        if e.size:
            self.abs_max = max(self.abs_max, float(row_max.max()))
            self.abs_sum += float(row_sum.sum())
        self.nan = self.nan or bool(np.isnan(self.ee))
        if self.with_scale and d is not None and s is not None and z is not None:
            self._add_scaled(r, row_max, row_sum, s, z, d)

    def _add_scaled(self, r: np.ndarray, row_max: np.ndarray, row_sum: np.ndarray,
                    s: np.ndarray, z: np.ndarray, d: QDtype) -> None:
        """LSB errors and clipping from row-wise reductions: ``s > 0`` is one value per
        row (per-channel, axis moved to the front) or per block, so max(|e| / s) is
        max(|e|) / s exactly; the clip test compares each element only in rows whose
        min or max leaves the range (or holds NaN)."""
        if np.any(~(s > 0)):
            raise ValueError("scale must be positive")
        s_rows = np.broadcast_to(np.asarray(s, dtype=np.float64).reshape(-1),
                                 row_max.shape) if np.size(s) in (1, row_max.size) else None
        if s_rows is None:  # pragma: no cover - scales always per row or per block
            raise ValueError("one scale per channel or per tensor")
        if row_max.size:
            self.lsb_max = max(self.lsb_max, float((row_max / s_rows).max()))
            self.lsb_sum += float((row_sum / s_rows).sum())
        slack = CLIP_TOLERANCE_LSB * s
        lo = (d.qmin - z - 0.5) * s - slack
        hi = (d.qmax - z + 0.5) * s + slack
        values = r.reshape(row_max.size or 1, -1)
        lo_rows = np.broadcast_to(np.asarray(lo, dtype=np.float64).reshape(-1), (len(values),))
        hi_rows = np.broadcast_to(np.asarray(hi, dtype=np.float64).reshape(-1), (len(values),))
        if not values.size:
            return
        fine = (values.min(axis=1) >= lo_rows) & (values.max(axis=1) <= hi_rows)
        for i in np.flatnonzero(~fine):
            row = values[i]
            self.clipped += row.size - int(np.count_nonzero((row >= lo_rows[i])
                                                            & (row <= hi_rows[i])))

    def result(self, n: int) -> PairStats:
        nan = float("nan")
        lsb_max = lsb_mean = clipped = None
        if self.with_scale:
            lsb_max = self.lsb_max if n else 0.0
            lsb_mean = self.lsb_sum / n if n else 0.0
            clipped = self.clipped / n if n else 0.0
        if self.nan:
            return PairStats(nan, nan, nan, nan, nan if self.with_scale else None,
                             nan if self.with_scale else None, clipped, self.rr, self.ee)
        return PairStats(
            sqnr_db=_sqnr_from_energies(self.rr, self.ee),
            max_abs_error=self.abs_max if n else 0.0,
            mean_abs_error=self.abs_sum / n if n else 0.0,
            cosine_similarity=_cosine_from_sums(self.rr, self.tt, self.rt),
            max_error_lsb=lsb_max, mean_error_lsb=lsb_mean, clipped_fraction=clipped,
            reference_energy=self.rr, error_energy=self.ee,
        )


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of products in float64 with numpy's own SIMD loop, not BLAS: a multithreaded
    BLAS ``dot`` on a busy machine was measured 7x slower (threads waiting for cores)."""
    return float(np.einsum("i,i->", a.ravel(), b.ravel()))


def _sqnr_from_energies(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * (np.log10(signal) - np.log10(noise)))


def _cosine_from_sums(rr: float, tt: float, rt: float) -> float:
    if rr == 0.0 and tt == 0.0:
        return 1.0
    if rr == 0.0 or tt == 0.0:
        return 0.0
    return float(np.clip(rt / (np.sqrt(rr) * np.sqrt(tt)), -1.0, 1.0))


def _pair_stats_separately(reference: ArrayLike, test: ArrayLike, scale: ArrayLike | None,
                           zero_point: ArrayLike | None, dtype: str | QDtype | None,
                           axis: int | None) -> PairStats:
    lsb_max = lsb_mean = clipped = None
    if scale is not None and zero_point is not None and dtype is not None:
        lsb = error_in_lsb(reference, test, scale, axis)
        lsb_max, lsb_mean = lsb.max, lsb.mean
        clipped = clipped_fraction(reference, scale, zero_point, dtype, axis)
    r, t = _pair(reference, test)
    e = r - t
    with np.errstate(over="ignore"):  # energies beyond float64 are reported as inf
        energies = float(np.sum(r * r)), float(np.sum(e * e))
    return PairStats(sqnr_db(r, t), max_abs_error(r, t), mean_abs_error(r, t),
                     cosine_similarity(r, t), lsb_max, lsb_mean, clipped, *energies)
