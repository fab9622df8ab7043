"""Weight health of one quantized weight: range use, saturation, suspicious scales."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qinspect.model import TensorQuant, Weight
from qinspect.quant.dtypes import qdtype

LOW_RANGE_USE = 0.5
HIGH_SATURATION = 0.01
WIDE_SCALE_SPREAD = 1e3
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class ScaleProblems:
    zero: int
    negative: int
    nan: int
    inf: int
    denormal: int

    @property
    def total(self) -> int:
        return self.zero + self.negative + self.nan + self.inf + self.denormal


@dataclass(frozen=True)
class WeightHealth:
    """How well a quantized weight uses its integer grid.

    ``range_used``: max |q - zero_point| over the tensor divided by the largest distance
    the dtype allows from that zero point (1.0 = the full range is used).
    ``min_channel_range_used``: the same for the worst channel.
    ``saturated_fraction``: share of values equal to qmin or qmax. A min/max calibrated
    weight puts each channel's extreme value on an edge, so up to two values per channel
    at the edges are expected; only the excess (``excess_saturated_fraction``) suggests
    clipping.
    ``scale_spread``: largest / smallest positive finite channel scale.
    """

    channels: int
    range_used: float
    min_channel_range_used: float
    saturated_fraction: float
    excess_saturated_fraction: float
    scale_min: float
    scale_max: float
    scale_spread: float
    scale_problems: ScaleProblems
    flags: tuple[str, ...]


def weight_health(weight: Weight) -> WeightHealth | None:
    """Health of a stored quantized weight; ``None`` for float or prepared weights."""
    if not weight.is_quantized or weight.quant is None:
        return None
    quant = weight.quant
    info = qdtype(quant.dtype)
    q = weight.values
    if quant.block_size is not None and _blocks_fit(q, quant):
        lo, hi = _block_min_max(q, quant.block_size)
        quant = replace(quant, axis=0)  # one (scale, zero point) per block, row-major
    else:
        lo, hi = _channel_min_max(q, quant.axis)
    qmin = info.qmin if quant.quant_min is None else quant.quant_min  # PT2E: -127..127
    qmax = info.qmax if quant.quant_max is None else quant.quant_max
    per_channel_used = _range_used(lo, hi, quant, qmin, qmax)
    used = float(per_channel_used.max()) if per_channel_used.size else 0.0
    worst = float(per_channel_used.min()) if per_channel_used.size else 0.0
    saturated = _saturated_fraction(q, lo, hi, qmin, qmax)
    problems = scale_problems(quant.scale)
    scale_lo, scale_hi, spread = _scale_stats(quant.scale)
    channels = int(quant.scale.size)
    excess = max(0.0, saturated - 2 * channels / q.size) if q.size else 0.0
    flags = _flags(used, worst, excess, problems, spread, quant)
    return WeightHealth(
        channels=channels, range_used=used, min_channel_range_used=worst,
        saturated_fraction=saturated, excess_saturated_fraction=excess,
        scale_min=scale_lo, scale_max=scale_hi, scale_spread=spread,
        scale_problems=problems, flags=flags,
    )


def _blocks_fit(q: np.ndarray, quant: TensorQuant) -> bool:
    block = quant.block_size or ()
    if len(block) != q.ndim or any(b <= 0 or n % b for n, b in zip(q.shape, block,
                                                                    strict=True)):
        return False
    blocks = int(np.prod([n // b for n, b in zip(q.shape, block, strict=True)]))
    return blocks == quant.scale.size == quant.zero_point.size


def _block_min_max(q: np.ndarray, block: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per block (torchao block-wise quantization), row-major like its scales."""
    if q.ndim != 2:
        flat = q.reshape(-1, int(np.prod(block)))
        return flat.min(axis=1).astype(np.int64), flat.max(axis=1).astype(np.int64)
    rows, cols = q.shape
    br, bc = block
    tiles = q.reshape(rows // br, br, cols // bc, bc)
    lo = tiles.min(axis=(1, 3)).reshape(-1).astype(np.int64)
    hi = tiles.max(axis=(1, 3)).reshape(-1).astype(np.int64)
    return lo, hi


def _channel_min_max(q: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or whole-tensor) min and max as int64 arrays, without copying ``q``."""
    if q.size == 0:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    if axis is None:
        return np.array([q.min()], np.int64), np.array([q.max()], np.int64)
    others = tuple(i for i in range(q.ndim) if i != axis)
    return q.min(axis=others).astype(np.int64), q.max(axis=others).astype(np.int64)


def _range_used(lo: np.ndarray, hi: np.ndarray, quant: TensorQuant, qmin: int,
                qmax: int) -> np.ndarray:
    """max |q - zp| per channel over the largest distance the dtype allows from zp."""
    zp = quant.zero_point.astype(np.float64)
    if quant.axis is None:
        zp = zp[:1]
    dist = np.maximum(hi - zp, zp - lo)
    limit = np.maximum(qmax - zp, zp - qmin)
    return np.divide(dist, limit, out=np.zeros_like(dist, dtype=np.float64), where=limit > 0)


def _saturated_fraction(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, qmin: int,
                        qmax: int) -> float:
    """Share of values at qmin or qmax; counts only when some channel reaches an edge."""
    if q.size == 0:
        return 0.0
    count = 0
    if int(lo.min()) == qmin:
        count += int(np.count_nonzero(q == qmin))
    if int(hi.max()) == qmax:
        count += int(np.count_nonzero(q == qmax))
    return count / q.size


def scale_problems(scale: np.ndarray) -> ScaleProblems:
    s = np.asarray(scale, dtype=np.float64)
    finite = np.isfinite(s)
    return ScaleProblems(
        zero=int(np.sum(s == 0)),
        negative=int(np.sum(finite & (s < 0))),
        nan=int(np.sum(np.isnan(s))),
        inf=int(np.sum(np.isinf(s))),
        denormal=int(np.sum(finite & (s > 0) & (s < FLOAT32_TINY))),
    )


def _scale_stats(scale: np.ndarray) -> tuple[float, float, float]:
    s = np.asarray(scale, dtype=np.float64)
    good = s[np.isfinite(s) & (s > 0)]
    if good.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = float(good.min()), float(good.max())
    return lo, hi, hi / lo


def _flags(used: float, worst: float, excess: float, problems: ScaleProblems,
           spread: float, quant: TensorQuant) -> tuple[str, ...]:
    flags = []
    if problems.total:
        parts = [f"{n} {name}" for name, n in vars(problems).items() if n]
        flags.append(f"bad scales: {', '.join(parts)} (dequantized values are wrong there)")
    if used < LOW_RANGE_USE:
        flags.append(f"uses {used:.0%} of the int range: the scale looks too large, "
                     "so precision is wasted")
    elif quant.axis is not None and worst < LOW_RANGE_USE / 2:
        flags.append(f"worst channel uses {worst:.0%} of the int range")
    if excess > HIGH_SATURATION:
        flags.append(f"{excess:.1%} of weights at qmin/qmax beyond each channel's own "
                     "extremes: clipped during quantization?")
    if np.isfinite(spread) and spread > WIDE_SCALE_SPREAD:
        flags.append(f"channel scales span {spread:.0f}x: some channels are near-dead or "
                     "outliers")
    return tuple(flags)
