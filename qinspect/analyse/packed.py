"""Health of packed weights (Hugging Face formats): codes, scales, structure.

Reads one layer's codes and scales at a time, so memory stays bounded by the largest
layer, not the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qinspect.model import ElementKind, Layer, PackedWeight, PerAxis, PerBlock, PerGroup

FEW_LEVELS = 0.5


@dataclass(frozen=True)
class ScaleStats:
    count: int
    min: float
    max: float
    nan: int
    inf: int
    zero: int
    negative: int

    @property
    def problems(self) -> int:
        return self.nan + self.inf + self.zero + self.negative


@dataclass(frozen=True)
class PackedHealth:
    """How a packed weight uses its codes.

    ``range_used``: the share of the code grid the stored codes span: ``(max - min) /
    (qmax - qmin)`` for ints and table indices, ``max |code| / max`` for floats.
    ``at_extremes``: share of codes on the grid's edges (qmin/qmax for ints, +-max for
    floats, the table's ends for NF4/FP4). A round-to-nearest quantizer puts each
    group's largest value on an edge, so about one value per group there is expected
    (``expected_at_extremes``).
    """

    code_min: float
    code_max: float
    range_used: float
    at_extremes: float
    expected_at_extremes: float
    scales: ScaleStats
    zero_point_min: float | None
    zero_point_max: float | None
    problems: tuple[str, ...]
    flags: tuple[str, ...]


def scale_stats(s: np.ndarray) -> ScaleStats:
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    finite = s[np.isfinite(s)]
    return ScaleStats(count=int(s.size),
                      min=float(finite.min()) if finite.size else math.nan,
                      max=float(finite.max()) if finite.size else math.nan,
                      nan=int(np.isnan(s).sum()), inf=int(np.isinf(s).sum()),
                      zero=int((s == 0).sum()), negative=int((s < 0).sum()))


def structure_problems(pw: PackedWeight) -> list[str]:
    """Shapes that do not match the bits, group size and layout the recipe implies."""
    q = pw.quant
    shape = pw.shape
    out: list[str] = []
    by_key = {t.key: t for t in q.tensors}
    scale = next((t for t in q.tensors if t.op is not None), None)
    if any(d <= 0 for d in shape):
        out.append(f"weight shape {list(shape)} has an empty dimension")
        return out
    if scale is None or len(shape) < 2:
        return out
    rows, cols = shape[-2], shape[-1]
    g = q.granularity
    n_scale = math.prod(scale.shape) if scale.shape else 1
    lead = math.prod(shape[:-2]) if len(shape) > 2 else 1
    if isinstance(g, PerGroup) and g.axis is not None:
        want = lead * rows * -(-cols // g.size)
        if n_scale != want and not q.scheme.scales_input_major:
            out.append(f"{scale.key}: {n_scale} scales, but {list(shape)} in groups of "
                       f"{g.size} needs {want}")
        if q.scheme.scales_input_major and scale.shape != (-(-cols // g.size), rows):
            out.append(f"{scale.key}: shape {list(scale.shape)}, expected "
                       f"[{-(-cols // g.size)}, {rows}] for group size {g.size}")
    elif isinstance(g, PerGroup):  # bitsandbytes flattened blocks
        want = -(-(rows * cols * lead) // g.size)
        if n_scale != want:
            out.append(f"{scale.key}: {n_scale} absmax values, but {rows * cols * lead} "
                       f"values in blocks of {g.size} need {want}")
    elif isinstance(g, PerBlock):
        want = -(-rows // g.shape[0]) * -(-cols // g.shape[1])
        if n_scale != want:
            out.append(f"{scale.key}: {n_scale} block scales, but {list(shape)} in "
                       f"{'x'.join(map(str, g.shape))} blocks needs {want}")
    elif isinstance(g, PerAxis) and n_scale != rows and not q.scheme.gptq:
        out.append(f"{scale.key}: {n_scale} scales for {rows} output channels")
    main = by_key.get(pw.key)
    if main is not None and q.element.bits < 8 and main.dtype in ("I32", "U8"):
        per = 32 if main.dtype == "I32" else 8
        stored = math.prod(main.shape) * per
        need = math.prod(shape) * q.element.bits
        if stored < need or stored - need >= per * max(1, math.prod(main.shape[:-1])):
            out.append(f"{main.key}: {math.prod(main.shape)} packed words hold {stored} bits, "
                       f"but {list(shape)} at {q.element.bits} bits needs {need}")
    return out


def packed_health(layer: Layer) -> PackedHealth | None:
    pw = layer.packed
    if pw is None:
        return None
    problems = structure_problems(pw)
    if problems:
        return PackedHealth(math.nan, math.nan, math.nan, math.nan, math.nan,
                            ScaleStats(0, math.nan, math.nan, 0, 0, 0, 0), None, None,
                            tuple(problems), ("cannot decode: " + problems[0],))
    try:
        hist = pw.source.code_histogram()  # type: ignore[attr-defined]
        if hist is None:
            hist = np.unique(pw.source.codes(), return_counts=True)
        scales = pw.source.scales()
        zps = pw.source.zero_points()
    except (ValueError, IndexError, TypeError) as exc:
        msg = f"cannot decode ({type(exc).__name__}: {str(exc)[:100]})"
        return PackedHealth(math.nan, math.nan, math.nan, math.nan, math.nan,
                            ScaleStats(0, math.nan, math.nan, 0, 0, 0, 0), None, None,
                            (msg,), (msg,))
    return _health(pw, hist[0], hist[1], scales, zps)


def _health(pw: PackedWeight, values: np.ndarray, counts: np.ndarray, scales: np.ndarray,
            zps: np.ndarray | None) -> PackedHealth:
    """Code statistics from a histogram: ``counts[i]`` codes have value ``values[i]``."""
    el = pw.quant.element
    values = np.asarray(values, np.float64)
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    stats = scale_stats(scales)
    expected = min(1.0, max(stats.count, 1) / max(total, 1))
    flags = []
    bad_codes = int(counts[~np.isfinite(values)].sum())
    present = (counts > 0) & np.isfinite(values)
    if not present.any():
        lo = hi = used = at = math.nan
    else:
        lo, hi = float(values[present].min()), float(values[present].max())
        if el.kind is ElementKind.FLOAT:
            edge = np.abs(values) == el.qmax
            used = max(abs(lo), abs(hi)) / el.qmax
        elif el.kind is ElementKind.INT:
            edge = (values == el.qmin) | (values == el.qmax)
            used = (hi - lo) / (el.qmax - el.qmin)
        else:
            edge = (values == 0) | (values == el.levels - 1)
            used = (hi - lo) / (el.levels - 1)
        at = float(counts[edge & present].sum()) / total
    if bad_codes:
        flags.append(f"{bad_codes} codes are NaN")
    if stats.problems:
        parts = [f"{n} {w}" for n, w in ((stats.nan, "NaN"), (stats.inf, "inf"),
                                         (stats.zero, "zero"), (stats.negative, "negative"))
                 if n]
        flags.append("scales: " + ", ".join(parts))
    if not math.isnan(used) and used < FEW_LEVELS:
        flags.append(f"codes span {100 * used:.0f} % of the grid")
    zmin = float(zps.min()) if zps is not None and zps.size else None
    zmax = float(zps.max()) if zps is not None and zps.size else None
    return PackedHealth(code_min=lo, code_max=hi, range_used=used, at_extremes=at,
                        expected_at_extremes=expected, scales=stats, zero_point_min=zmin,
                        zero_point_max=zmax, problems=(), flags=tuple(flags))
