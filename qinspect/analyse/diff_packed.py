"""diff for Hugging Face checkpoints: a quantized model against its base (bf16/fp16/fp32
safetensors) or against another quantization of the same base.

Layers pair by module name. Each packed weight is dequantized exactly as its producer does
(:mod:`qinspect.loaders.hf.decode`), one layer at a time, and compared with the other side
in one streaming pass (:func:`qinspect.quant.metrics.pair_stats`). LSB errors use each
value's own group scale; for float and codebook elements (FP8, FP4, NF4) the "LSB" is one
unit of the group scale, since their grid is not uniform.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from qinspect.analyse import diff as D
from qinspect.model import Checkpoint, ElementKind, Layer, PackedScheme, PackedWeight
from qinspect.quant import metrics

#: how far beyond the largest code value a real value may lie before rounding cannot reach
#: it: half a step for ints, half the top gap for e4m3 (448 -> 480) and e2m1 (4 -> 6)
TOP_HALF_STEP = {"float8_e4m3fn": 16.0, "float4_e2m1": 1.0}
VERY_LOW_SQNR_DB = 5.0


def diff_packed(a: Checkpoint, b: Checkpoint, layer_glob: str | None, sort: str,
                progress: Callable[[str, int, int], None] | None) -> D.DiffReport:
    by_b = {lay.name: lay for lay in b.layers}
    names_a = {lay.name for lay in a.layers}
    pairs = [(lay, by_b[lay.name]) for lay in a.layers if lay.name in by_b]
    listed = [(x, y) for x, y in pairs if D._matches(x.name, layer_glob)]
    rows = []
    for i, (x, y) in enumerate(listed):
        if progress is not None:
            progress(x.name, i, len(listed))
        rows.append(compare_layers(x, y))
    rows = D.sort_rows(rows, sort)
    only_a = [lay for lay in a.layers if lay.name not in by_b]
    only_b = [lay for lay in b.layers if lay.name not in names_a]
    summary = D._summary(a, b, rows, len(pairs), only_a, only_b)
    lonely = ([x.name for x in only_a if _has_weight(x) and D._matches(x.name, layer_glob)],
              [x.name for x in only_b if _has_weight(x) and D._matches(x.name, layer_glob)])
    lines = _interpret(rows, summary, lonely)
    lines += _awq_lines(a, b)
    return D.DiffReport(a, b, tuple(rows),
                        tuple(D._side_only(x) for x in only_a if D._matches(x.name, layer_glob)),
                        tuple(D._side_only(x) for x in only_b if D._matches(x.name, layer_glob)),
                        summary, tuple(lines), sort, layer_glob, False)


def _has_weight(layer: Layer) -> bool:
    return layer.weight is not None or layer.packed is not None


def _shape(layer: Layer) -> tuple[int, ...] | None:
    if layer.packed is not None:
        return layer.packed.shape
    return layer.weight.shape if layer.weight is not None else None


def values(layer: Layer, transpose: bool = False) -> np.ndarray:
    """Real values of a layer's weight: dequantized as the producer does, or the floats."""
    if layer.packed is not None:
        return layer.packed.source.dequantize()
    assert layer.weight is not None
    out = np.asarray(layer.weight.values, dtype=np.float32)
    return np.swapaxes(out, -1, -2) if transpose else out


def _in_out_layout(packed: Layer, other: Layer) -> bool:
    """gpt-oss's bf16 experts are stored ``[E, in, out]`` (used as ``x @ W``) while its
    MXFP4 blocks are ``[E, out, in/32, 16]`` (transformers ``convert_moe_packed_tensors``
    transposes after decoding): the float side must be transposed to pair them."""
    return (packed.packed is not None and packed.packed.quant.scheme is PackedScheme.GPTOSS_MXFP4
            and other.packed is None and other.weight is not None
            and len(other.weight.shape) == 3)


def compare_layers(a: Layer, b: Layer) -> D.LayerDiff:
    sa, sb = _shape(a), _shape(b)
    swap_a, swap_b = _in_out_layout(b, a), _in_out_layout(a, b)
    if swap_a and sa is not None:
        sa = (*sa[:-2], sa[-1], sa[-2])
    if swap_b and sb is not None:
        sb = (*sb[:-2], sb[-1], sb[-2])

    def row(comparison: D.Comparison) -> D.LayerDiff:
        return D.LayerDiff(name=a.name, name_b=b.name, how="same module name", kind_a=a.kind,
                           kind_b=b.kind, mode_a=a.mode.value, mode_b=b.mode.value,
                           comparison=comparison, shape_a=sa, shape_b=sb,
                           bias_in=D._presence(a.bias, b.bias))

    if sa is None or sb is None:
        return row(D.Comparison.QPARAMS_ONLY if sa is None and sb is None
                   else D.Comparison.WEIGHT_ONE_SIDE)
    if sa != sb:
        problem = (f"weight shapes differ: {D._shape(sa)} in A, {D._shape(sb)} in B (a "
                   "different architecture under this name)")
        return replace(row(D.Comparison.SHAPE_MISMATCH), problem=problem, flags=(problem,))
    qa, qb = a.packed is not None, b.packed is not None
    if qa and qb:
        comparison, ref, cand = D.Comparison.QUANTIZED_VS_QUANTIZED, a, b
    elif qa or qb:
        comparison = D.Comparison.FLOAT_VS_QUANTIZED
        ref, cand = (b, a) if qa else (a, b)
    else:
        comparison, ref, cand = D.Comparison.FLOAT_VS_FLOAT, a, b
    try:
        swap = {id(a): swap_a, id(b): swap_b}
        error = weight_error(values(ref, swap[id(ref)]), values(cand, swap[id(cand)]),
                             cand.packed, "a" if ref is a else "b")
    except (ValueError, IndexError, TypeError) as exc:
        problem = f"cannot dequantize ({type(exc).__name__}: {str(exc)[:100]})"
        return replace(row(D.Comparison.UNSUPPORTED), problem=problem, flags=(problem,))
    return _flag(replace(row(comparison), weight=error,
                         bias_max_abs_error=D._bias_error(a.bias, b.bias)))


def weight_error(ref: np.ndarray, cand: np.ndarray, packed: PackedWeight | None,
                 side: str) -> D.WeightError:
    ref = np.asarray(ref, np.float64).reshape(-1)
    cand = np.asarray(cand, np.float64).reshape(-1)
    stats = metrics.pair_stats(ref, cand, scale=None, zero_point=None, dtype=None, axis=None)
    max_lsb = mean_lsb = clipped = None
    granularity = dtype = None
    bits = None
    if packed is not None:
        q = packed.quant
        el = q.element
        dtype, bits = el.name, el.bits
        granularity = q.granularity.describe()
        scales = np.asarray(packed.source.element_scales(), np.float64).reshape(-1)
        ok = np.isfinite(scales) & (scales > 0)
        if ok.all():
            err = np.abs(ref - cand) / scales
            max_lsb, mean_lsb = float(err.max()) if err.size else 0.0, float(err.mean())
            clipped = _clipped(ref, scales, packed)
        if el.kind is not ElementKind.INT:
            granularity += " (error in units of the group scale: the grid is not uniform)"
    return D.WeightError(
        reference=side, sqnr_db=stats.sqnr_db, max_abs_error=stats.max_abs_error,
        mean_abs_error=stats.mean_abs_error, cosine_similarity=stats.cosine_similarity,
        max_error_lsb=max_lsb, mean_error_lsb=mean_lsb, clipped_fraction=clipped,
        dtype=dtype, reference_energy=stats.reference_energy, error_energy=stats.error_energy,
        granularity=granularity, element_bits=bits)


def _clipped(ref: np.ndarray, scales: np.ndarray, packed: PackedWeight) -> float:
    """Share of reference values no code can reach within half a step (clamped)."""
    el = packed.quant.element
    x = ref / scales
    if el.kind is ElementKind.INT:
        zps = packed.source.element_zero_points()
        zp = 0.0 if zps is None else np.asarray(zps, np.float64).reshape(-1)
        ideal = x + zp
        slack = 0.5 + 1e-3
        return float(np.mean((ideal < el.qmin - slack) | (ideal > el.qmax + slack)))
    top = el.qmax + TOP_HALF_STEP.get(el.name, 0.0)
    return float(np.mean(np.abs(x) > top * (1 + 1e-6)))


def _flag(row: D.LayerDiff) -> D.LayerDiff:
    w = row.weight
    flags: list[str] = []
    if w is not None and row.comparison in D.QUANTIZED_COMPARISONS:
        if math.isnan(w.sqnr_db):
            flags.append("SQNR is NaN: a weight or scale is NaN/infinite")
        elif w.sqnr_db < VERY_LOW_SQNR_DB:
            flags.append(f"SQNR {w.sqnr_db:.1f} dB: the dequantized weight barely resembles "
                         "the other side (wrong scales, wrong packing, or another model)")
        if w.dtype is not None and w.max_error_lsb is None:
            flags.append("some scales are zero, negative, NaN or infinite: dequantized "
                         "values are wrong there")
    return replace(row, flags=tuple(flags))


def _awq_lines(a: Checkpoint, b: Checkpoint) -> list[str]:
    for c in (a, b):
        if c.hf is not None and c.hf.method == "awq":
            return ["AWQ scales each input channel of a weight and divides the previous "
                    "layer by the same factors, so an AWQ weight differs from its base by "
                    "design: SQNR against the base mixes that smoothing with the rounding "
                    "error"]
    return []


def _interpret(rows: list[D.LayerDiff], s: D.DiffSummary,
               lonely: tuple[list[str], list[str]]) -> list[str]:
    if s.layers_paired == 0:
        return [f"no layer of A pairs with a layer of B by module name (A has {s.layers_a}, "
                f"B has {s.layers_b}): these checkpoints look like different models"]
    lines = [f"{r.name}: {f}" for r in rows for f in r.flags]
    for side, names in (("A", lonely[0]), ("B", lonely[1])):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
            lines.append(f"weights only in {side}: {shown}")
    quantized = [r for r in rows if r.weight is not None
                 and r.comparison in D.QUANTIZED_COMPARISONS]
    lsb = [r.weight.max_error_lsb for r in quantized
           if r.weight and r.weight.max_error_lsb is not None]
    if lsb:
        worst = max(lsb)
        lines.append(f"largest error {worst:.2f} LSB of the group scale over {len(quantized)} "
                     "quantized weights (round-to-nearest inside the range gives <= 0.5; "
                     "GPTQ and AWQ trade per-weight error for layer-output error, so more is "
                     "expected from them)")
    clipped = [r for r in quantized if r.weight and r.weight.clipped_fraction]
    if clipped:
        lines.append(f"{len(clipped)} layer(s) have values beyond their group's range (see "
                     "'clipped'): the scale was fitted to other values, or the quantizer "
                     "clips on purpose (GPTQ, MSE observers)")
    same = [r for r in rows if r.comparison is D.Comparison.FLOAT_VS_FLOAT and r.weight
            and r.weight.error_energy != 0]
    if same:
        lines.append(f"{len(same)} float layer(s) differ between A and B")
    return lines
