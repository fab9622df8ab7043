"""Two checkpoints -> :class:`DiffReport`: what quantization cost, layer by layer.

Layers are paired by module path (:mod:`qinspect.analyse.pairing`); BatchNorms that one
side has folded are folded into the other side first (:mod:`qinspect.analyse.fold`).
Each pair is compared according to what the two files hold:

* float vs quantized (fp32 vs int8, and PTQ/QAT-prepared vs converted): the float weight
  is the reference ``w``, the quantized one is dequantized (``dq(q)``, bit-exact with
  torch) and measured against it: SQNR ``20 log10(||w|| / ||w - dq(q)||)`` dB, max/mean
  absolute error, max error in LSB (``|w - dq(q)| / scale`` of the element's channel:
  round-to-nearest inside the range gives at most 0.5), share of ``w`` outside the
  channel's representable range, cosine similarity;
* QAT-prepared vs converted, in addition: whether ``convert`` produced exactly the
  fake-quantized ints and the observers' output qparams (:class:`QatCheck`);
* quantized vs quantized: the same metrics between the two dequantized weights (A is the
  reference, B's scales give the LSB), plus changed scales, zero points and int values;
* float vs float: a plain tensor diff.

Everything here is numpy on the loaded :class:`Checkpoint`; no torch.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from qinspect.analyse.fold import EpsChoice, fold_batchnorm, infer_eps
from qinspect.analyse.pairing import Pair, pair_layers
from qinspect.errors import InputError
from qinspect.model import (
    ActQuant,
    Checkpoint,
    Layer,
    Mode,
    PerAxis,
    PerGroup,
    PerTensor,
    Role,
    TensorQuant,
    Weight,
)
from qinspect.names import natural_key
from qinspect.quant import affine, metrics
from qinspect.quant.dtypes import QDTYPES, qdtype

SORTS = ("sqnr", "name", "error")
LOW_SQNR_DB = 25.0
"""Below this, int8 weights deserve a look (a well-scaled int8 weight is ~35-45 dB)."""
MAX_ROUNDING_LSB = 0.5
"""Round-to-nearest inside the range errs by at most half a step."""
LSB_SLACK = 1e-3
"""float32 rounding of ``x * (1/scale)`` can push an exact half step slightly over 0.5."""
FUSED_FAKE_QUANT_RATIOS = (127.0 / 127.5, 128.0 / 127.5)
"""Converted / fake-quant scale when torch's fused fake-quant (default QAT qconfig) made a
symmetric scale as ``max(max / 127, -min / 128)`` and convert's observer as
``max(-min, max) / 127.5`` (pytorch/pytorch#88800)."""
PREPARED_MODES = (Mode.QAT_PREPARED, Mode.PTQ_PREPARED)
ROLE_LABELS = {
    Role.WEIGHT_QPARAMS: "weight fake-quant qparams",
    Role.INPUT_QPARAMS: "input qparams",
    Role.OUTPUT_QPARAMS: "output qparams",
    Role.OBSERVER_STATS: "observer statistics",
    Role.FAKE_QUANT_FLAGS: "fake-quant switches",
    Role.PACKED_DTYPE: "packed dtype",
    Role.NORM_STATS: "BatchNorm running statistics",
    Role.PARAM: "float parameters",
    Role.UNUSED: "unused scale/zero_point",
}


class Comparison(str, Enum):
    """What was compared for one pair of layers."""

    FLOAT_VS_QUANTIZED = "float-vs-quantized"
    PREPARED_VS_CONVERTED = "prepared-vs-converted"
    QUANTIZED_VS_QUANTIZED = "quantized-vs-quantized"
    FLOAT_VS_FLOAT = "float-vs-float"
    QPARAMS_ONLY = "qparams-only"
    WEIGHT_ONE_SIDE = "weight-on-one-side"
    SHAPE_MISMATCH = "shape-mismatch"
    UNSUPPORTED = "unsupported"


QUANTIZED_COMPARISONS = (Comparison.FLOAT_VS_QUANTIZED, Comparison.PREPARED_VS_CONVERTED,
                         Comparison.QUANTIZED_VS_QUANTIZED)


@dataclass(frozen=True)
class WeightError:
    """Error of the weight on one side against the reference weight on the other.

    ``reference``: ``"a"`` or ``"b"``, the side taken as exact (the float side; A when
    both are quantized or both float). LSB and clipping use the quantized side's scales
    and are ``None`` for float-vs-float. ``reference_energy`` = ``||w||^2`` and
    ``error_energy`` = ``||w - dq(q)||^2`` add up to the model-level SQNR.
    """

    reference: str
    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    cosine_similarity: float
    max_error_lsb: float | None
    mean_error_lsb: float | None
    clipped_fraction: float | None
    dtype: str | None
    reference_energy: float
    error_energy: float
    granularity: str | None = None
    """Block-wise (torchao) weights: the scale's granularity and block shape, e.g.
    ``per group of 32 (blocks 1x32)``; LSB and clipping then use each
    element's block scale. None for per-tensor/per-channel torch schemes."""
    channel_sqnr_db: tuple[float, ...] | None = None
    """SQNR of each output channel (slices along the scale's axis, else axis 0), in dB;
    None for a scalar weight."""

    element_bits: int | None = None
    """Bits of a packed weight's element type (Hugging Face formats: int4, fp8, nf4...)."""

    @property
    def bits(self) -> int | None:
        if self.element_bits is not None:
            return self.element_bits
        return qdtype(self.dtype).bits if self.dtype else None


@dataclass(frozen=True)
class QuantChange:
    """How the quantization of a weight changed between two quantized files."""

    dtype_a: str
    dtype_b: str
    scheme_a: str
    scheme_b: str
    channels: int
    scales_changed: int | None
    max_scale_change: float | None
    zero_points_changed: int | None
    int_changed_fraction: float | None


@dataclass(frozen=True)
class ActChange:
    """Output qparams on both sides (scale, zero point)."""

    scale_a: float
    zero_point_a: int
    scale_b: float
    zero_point_b: int

    @property
    def equal(self) -> bool:
        return self.scale_a == self.scale_b and self.zero_point_a == self.zero_point_b


@dataclass(frozen=True)
class FoldReport:
    """A BatchNorm folded into one side's weight and bias before comparing."""

    batchnorm: str
    side: str
    eps: float
    eps_source: str
    eps_matched: bool
    eps_message: str
    unfolded_sqnr_db: float | None


@dataclass(frozen=True)
class QatCheck:
    """Did ``convert`` turn the QAT-prepared layer into exactly what training simulated?

    ``int_mismatches``: converted ints that differ from
    ``clamp(round(w / s) + zp)`` with the *fake-quant's* scale ``s`` and zero point (as
    ``torch.quantize_per_channel``/``per_tensor`` compute it). ``int_mismatches_own_qparams``:
    the same with the converted file's own qparams (non-zero means rounding differs,
    not only qparams). ``None`` where the layer has no weight.
    """

    weight_checked: bool
    weight_qparams_equal: bool | None
    int_mismatches: int | None
    int_mismatches_own_qparams: int | None
    int_total: int | None
    scale_ratio_min: float | None
    scale_ratio_max: float | None
    output_qparams_equal: bool | None
    causes: tuple[str, ...]
    """Why the layer is not bit-exact, in sentences that hold for any layer (numbers are
    in the fields), so a report can say each cause once."""

    @property
    def bit_exact(self) -> bool:
        return (self.weight_qparams_equal is not False and not self.int_mismatches
                and self.output_qparams_equal is not False)

    def __bool__(self) -> bool:
        return self.bit_exact


@dataclass(frozen=True)
class LayerDiff:
    """One pair of layers: what was compared and the numbers."""

    name: str
    name_b: str
    how: str
    kind_a: str
    kind_b: str
    mode_a: str
    mode_b: str
    comparison: Comparison
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    weight: WeightError | None = None
    bias_max_abs_error: float | None = None
    bias_in: str = "none"
    quant_change: QuantChange | None = None
    output: ActChange | None = None
    fold: FoldReport | None = None
    qat: QatCheck | None = None
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    extras_max_abs_error: Mapping[str, float] = field(default_factory=dict)
    problem: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SideOnly:
    """A layer present in one file only, with its keys."""

    name: str
    kind: str
    mode: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class DiffSummary:
    """Model-level numbers.

    ``weight_sqnr_db``: ``10 log10(sum ||w||^2 / sum ||w - dq(q)||^2)`` over the listed
    pairs with a quantized side (over all listed weight pairs when neither file is
    quantized); ``None`` when no weight was compared. ``bit_exact``: ``None`` unless
    QAT-prepared layers were compared with converted ones.
    """

    comparison: str
    layers_a: int
    layers_b: int
    layers_paired: int
    layers_listed: int
    layers_quantized: int
    weights_compared: int
    weight_sqnr_db: float | None
    worst_layer: str | None
    flagged_layers: int
    bit_exact: bool | None
    folded: int
    shape_mismatches: int
    file_size_a: int
    file_size_b: int
    unmatched_keys_a: tuple[str, ...]
    unmatched_keys_b: tuple[str, ...]


@dataclass(frozen=True)
class DiffReport:
    a: Checkpoint
    b: Checkpoint
    layers: tuple[LayerDiff, ...]
    only_a: tuple[SideOnly, ...]
    only_b: tuple[SideOnly, ...]
    summary: DiffSummary
    interpretation: tuple[str, ...]
    sort: str
    layer_glob: str | None
    fold_bn: bool


def diff(a: Checkpoint, b: Checkpoint, layer_glob: str | None = None, sort: str = "sqnr",
         fold_bn: bool = True, progress: Callable[[str, int, int], None] | None = None
         ) -> DiffReport:
    """Compare two loaded checkpoints layer by layer (see the module docstring).
    ``progress(what, done, total)`` is called before each pair (the CLI draws a bar)."""
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of: {', '.join(SORTS)}")
    pairing = pair_layers(a, b, fold_bn)
    listed = [p for p in pairing.pairs if _listed(p, layer_glob)]
    compared = []
    for i, p in enumerate(listed):
        if progress is not None:
            progress(p.name, i, len(listed))
        compared.append(compare_pair(p))
    rows = sort_rows(compared, sort)
    only_a = tuple(_side_only(lay) for lay in pairing.only_a if _matches(lay.name, layer_glob))
    only_b = tuple(_side_only(lay) for lay in pairing.only_b if _matches(lay.name, layer_glob))
    summary = _summary(a, b, rows, len(pairing.pairs), pairing.only_a, pairing.only_b)
    lonely = (_weighted(pairing.only_a, layer_glob), _weighted(pairing.only_b, layer_glob))
    return DiffReport(a, b, tuple(rows), only_a, only_b, summary,
                      interpret(rows, summary, *lonely), sort, layer_glob, fold_bn)


def _weighted(layers: Iterable[Layer], pattern: str | None) -> list[str]:
    """Names of one-sided layers that hold a weight (QuantStubs and activations do not)."""
    return [lay.name for lay in layers if lay.weight is not None and _matches(lay.name, pattern)]


def _matches(name: str, pattern: str | None) -> bool:
    return pattern is None or fnmatch.fnmatchcase(name, pattern)


def _listed(pair: Pair, pattern: str | None) -> bool:
    return _matches(pair.a.name, pattern) or _matches(pair.b.name, pattern)


def _side_only(layer: Layer) -> SideOnly:
    return SideOnly(layer.name, layer.kind, layer.mode.value, tuple(r.key for r in layer.keys))


# --- one pair -------------------------------------------------------------------------


def compare_pair(pair: Pair) -> LayerDiff:
    """Every number for one pair of layers."""
    a, b = pair.a, pair.b
    if a.weight is None or b.weight is None:
        kind = Comparison.QPARAMS_ONLY if a.weight is b.weight else Comparison.WEIGHT_ONE_SIDE
        row = replace(_pair_row(pair, kind), bias_max_abs_error=_bias_error(a.bias, b.bias),
                      bias_in=_presence(a.bias, b.bias))
        return _with_qat_output(row, a, b)
    if a.weight.shape != b.weight.shape:
        problem = (f"weight shapes differ: {_shape(a.weight.shape)} in A, "
                   f"{_shape(b.weight.shape)} in B (a different architecture under this name)")
        return replace(_pair_row(pair, Comparison.SHAPE_MISMATCH),
                       bias_in=_presence(a.bias, b.bias), problem=problem, flags=(problem,))
    reason = _not_comparable(a.weight) or _not_comparable(b.weight)
    if reason is not None:
        return replace(_pair_row(pair, Comparison.UNSUPPORTED),
                       bias_in=_presence(a.bias, b.bias), problem=reason)
    return _compare_weights(pair, a.weight, b.weight)


def _pair_row(pair: Pair, comparison: Comparison) -> LayerDiff:
    """The row of a pair with what every comparison reports (names, kinds, modes, shapes,
    output qparams, one-sided parts, extras); the weight numbers are added by the caller."""
    a, b = pair.a, pair.b
    return LayerDiff(
        name=a.name, name_b=b.name, how=pair.how, kind_a=a.kind, kind_b=b.kind,
        mode_a=a.mode.value, mode_b=b.mode.value, comparison=comparison,
        shape_a=a.weight.shape if a.weight else None, shape_b=b.weight.shape if b.weight else None,
        output=_act_change(a.output, b.output), only_a=_components(a, b),
        only_b=_components(b, a), extras_max_abs_error=_extras_error(a, b),
    )


def _not_comparable(w: Weight) -> str | None:
    """Why a weight cannot be dequantized here, or None."""
    q = w.quant
    if q is not None and q.dtype.removeprefix("torch.") not in QDTYPES:
        return f"weight dtype {q.dtype}: not an integer quantization dtype qinspect knows"
    if w.is_quantized and q is not None and q.block_size is not None:
        try:
            grid = affine.block_grid(w.shape, q.block_size)
        except ValueError as exc:
            return f"block-wise weights: {exc}"
        if int(np.prod(grid)) != q.scale.size:
            return (f"block-wise weights: {q.scale.size} scales for a grid of "
                    f"{_shape(grid)} blocks of {_shape(q.block_size)}")
    return None


def _compare_weights(pair: Pair, wa: Weight, wb: Weight) -> LayerDiff:
    a, b = pair.a, pair.b
    va, vb = real_values(wa), real_values(wb)
    bias_a, bias_b = a.bias, b.bias
    comparison, ref_side = _classify(a, b, wa, wb)
    row = _pair_row(pair, comparison)
    quant = _candidate_quant(wa, wb, ref_side)
    fold = None
    if pair.fold is not None:
        fold, folded_w, folded_b = _apply_fold(pair, va, vb, bias_a, bias_b, ref_side)
        if pair.fold_side == "a":
            va, bias_a = folded_w, folded_b
        else:
            vb, bias_b = folded_w, folded_b
    ref, cand = (va, vb) if ref_side == "a" else (vb, va)
    error = weight_error(ref, cand, quant, ref_side)
    qat = None
    if comparison is Comparison.PREPARED_VS_CONVERTED:
        prep, conv = (a, b) if ref_side == "a" else (b, a)
        prep_values = va if ref_side == "a" else vb
        qat = qat_check(prep, conv, prep_values, _oriented(row.output, ref_side == "a"))
    change = quant_change(wa, wb) if comparison is Comparison.QUANTIZED_VS_QUANTIZED else None
    row = replace(row, weight=error, quant_change=change, fold=fold, qat=qat,
                  bias_max_abs_error=_bias_error(bias_a, bias_b),
                  bias_in=_presence(bias_a, bias_b))
    return _with_flags(row)


def _classify(a: Layer, b: Layer, wa: Weight, wb: Weight) -> tuple[Comparison, str]:
    """The kind of comparison and which side is the reference (the float one);
    ``wa``, ``wb``: the two layers' weights."""
    qa, qb = wa.is_quantized, wb.is_quantized
    if qa and qb:
        return Comparison.QUANTIZED_VS_QUANTIZED, "a"
    if not qa and not qb:
        return Comparison.FLOAT_VS_FLOAT, "a"
    float_side = a if qb else b
    kind = (Comparison.PREPARED_VS_CONVERTED if float_side.mode in PREPARED_MODES
            else Comparison.FLOAT_VS_QUANTIZED)
    return kind, "a" if qb else "b"


def _candidate_quant(wa: Weight, wb: Weight, ref_side: str) -> TensorQuant | None:
    cand = wb if ref_side == "a" else wa
    return cand.quant if cand.is_quantized else None


def real_values(w: Weight) -> np.ndarray:
    """The real values a weight stands for: dequantized (as torch does) or the floats."""
    if not w.is_quantized or w.quant is None:
        return np.asarray(w.values)
    q = w.quant
    if q.block_size is not None:  # torchao: float32 scales (read as float64, exactly)
        return affine.dequantize_blockwise(w.values, np.asarray(q.scale).astype(np.float32),
                                           q.zero_point, q.block_size)
    if not qdtype(q.dtype).is_quantized_tensor_dtype:  # PT2E / decomposed: plain int dtypes
        if q.axis is not None:
            return affine.dequantize_per_channel_decomposed(w.values, q.scale, q.zero_point,
                                                            q.axis)
        return affine.dequantize_per_tensor_decomposed(w.values, float(q.scale[0]),
                                                       int(q.zero_point[0]))
    if q.qscheme == "per_channel_affine_float_qparams":
        return affine.dequantize_per_channel_float_qparams(w.values, q.scale, q.zero_point,
                                                           q.axis or 0)
    if q.axis is not None:
        return affine.dequantize_per_channel(w.values, q.scale, q.zero_point, q.axis)
    return affine.dequantize_per_tensor(w.values, float(q.scale[0]), int(q.zero_point[0]))


def weight_error(ref: np.ndarray, cand: np.ndarray, quant: TensorQuant | None,
                 reference: str) -> WeightError:
    """The metrics of :mod:`qinspect.quant.metrics` for one weight pair, in one pass.

    Block-wise (torchao) weights are cut into their blocks first, one row per block, so
    each element's LSB and clipping range come from its own block's scale."""
    channels = None
    if np.ndim(ref) > 0 and np.shape(ref) == np.shape(cand):
        axis = quant.axis if quant is not None and quant.axis is not None else 0
        if not -np.ndim(ref) <= axis < np.ndim(ref):  # a file's axis is untrusted
            axis = 0
        channels = tuple(metrics.channel_sqnr_db(ref, cand, axis).tolist())
    granularity = None
    if quant is not None and quant.block_size is not None:
        ref, cand = _blocks(ref, quant.block_size), _blocks(cand, quant.block_size)
        granularity = _block_granularity(quant)
        quant = replace(quant, axis=0, block_size=None)
    scaled = quant if quant is not None and _usable_scales(quant.scale) else None
    per_channel = scaled is not None and scaled.axis is not None
    stats = metrics.pair_stats(
        ref, cand,
        scale=(scaled.scale if per_channel else scaled.scale[0]) if scaled else None,
        zero_point=(scaled.zero_point if per_channel else scaled.zero_point[0])
        if scaled else None,
        dtype=scaled.dtype if scaled else None,
        axis=scaled.axis if scaled else None,
    )
    return WeightError(
        reference=reference,
        sqnr_db=stats.sqnr_db,
        max_abs_error=stats.max_abs_error,
        mean_abs_error=stats.mean_abs_error,
        cosine_similarity=stats.cosine_similarity,
        max_error_lsb=stats.max_error_lsb, mean_error_lsb=stats.mean_error_lsb,
        clipped_fraction=stats.clipped_fraction,
        dtype=quant.dtype if quant is not None else None,
        reference_energy=stats.reference_energy, error_energy=stats.error_energy,
        granularity=granularity, channel_sqnr_db=channels,
    )


def _block_granularity(q: TensorQuant) -> str:
    """``per row (blocks 1x128)``, ``per group of 32 (blocks 1x32)``..."""
    block = q.block_size or ()
    g = q.granularity
    label = ("per row" if isinstance(g, PerAxis) else f"per group of {g.size}"
             if isinstance(g, PerGroup) else "per tensor" if isinstance(g, PerTensor)
             else "per block")
    return f"{label} (blocks {_shape(block)})"


def _blocks(values: np.ndarray, block_size: tuple[int, ...]) -> np.ndarray:
    """``values`` as (blocks, elements per block), blocks in row-major grid order (the
    order of torchao's flattened scales)."""
    v = np.asarray(values)
    grid = affine.block_grid(v.shape, block_size)
    split = [d for g, n in zip(grid, v.shape, strict=True) for d in (g, n // g)]
    order = list(range(0, 2 * v.ndim, 2)) + list(range(1, 2 * v.ndim, 2))
    return v.reshape(split).transpose(order).reshape(int(np.prod(grid)), -1)


def _usable_scales(scale: np.ndarray) -> bool:
    s = np.asarray(scale, dtype=np.float64)
    return bool(s.size) and bool(np.all(np.isfinite(s) & (s > 0)))


def _apply_fold(pair: Pair, va: np.ndarray, vb: np.ndarray, bias_a: np.ndarray | None,
                bias_b: np.ndarray | None, ref_side: str
                ) -> tuple[FoldReport, np.ndarray, np.ndarray]:
    """Fold the pair's BatchNorm into its side; the other side tells which eps to use."""
    bn = pair.fold
    assert bn is not None
    mine, theirs = (va, vb) if pair.fold_side == "a" else (vb, va)
    my_bias, their_bias = (bias_a, bias_b) if pair.fold_side == "a" else (bias_b, bias_a)

    def score(folded: np.ndarray) -> float:
        ref, cand = (folded, theirs) if pair.fold_side == ref_side else (theirs, folded)
        return metrics.sqnr_db(ref, cand)

    choice: EpsChoice = infer_eps(mine, my_bias, bn, their_bias, score)
    folded_w, folded_b = fold_batchnorm(mine, my_bias, bn, choice.eps)
    report = FoldReport(bn.name, pair.fold_side or "a", choice.eps, choice.source,
                        choice.matched, choice.message, score(mine))
    return report, folded_w, folded_b


def quant_change(wa: Weight, wb: Weight) -> QuantChange:
    """Scales, zero points and int values that differ between two quantized weights."""
    qa, qb = wa.quant, wb.quant
    assert qa is not None and qb is not None
    same_layout = qa.scale.size == qb.scale.size and qa.axis == qb.axis
    scales = zps = rel = None
    if same_layout:
        scales = int(np.count_nonzero(qa.scale != qb.scale))
        zps = int(np.count_nonzero(qa.zero_point != qb.zero_point))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(np.asarray(qb.scale, np.float64) / np.asarray(qa.scale, np.float64) - 1)
        rel = float(np.max(ratio)) if ratio.size else 0.0
    ints = None
    if qa.dtype == qb.dtype and wa.values.shape == wb.values.shape and wa.values.size:
        ints = float(np.count_nonzero(wa.values != wb.values) / wa.values.size)
    return QuantChange(qa.dtype, qb.dtype, _scheme(qa), _scheme(qb),
                       int(max(qa.scale.size, qb.scale.size)), scales, rel, zps, ints)


def _scheme(q: TensorQuant) -> str:
    return q.qscheme + (f" (axis {q.axis})" if q.axis is not None else "")


# --- QAT-prepared vs converted --------------------------------------------------------


def qat_check(prep: Layer, conv: Layer, values: np.ndarray, output: ActChange | None
              ) -> QatCheck | None:
    """Check a QAT-prepared layer (float weight + fake-quant) against its converted form.

    ``values``: the prepared float weight (BatchNorm-folded when the pair has a fold).
    """
    if prep.mode is not Mode.QAT_PREPARED:
        return None
    out_equal = output.equal if output is not None else None
    fq = prep.weight.quant if prep.weight else None
    conv_w = conv.weight
    if fq is None or conv_w is None or conv_w.quant is None or not conv_w.is_quantized:
        return QatCheck(False, None, None, None, None, None, None, out_equal, ())
    cq = conv_w.quant
    notes: list[str] = []
    expected_fq = _quantize(values, fq, cq.dtype, notes, "the fake-quant's")
    expected_own = _quantize(values, cq, cq.dtype, notes, "the converted file's")
    ints = conv_w.values
    mism = _count_mismatch(expected_fq, ints)
    own = _count_mismatch(expected_own, ints)
    qp_equal, ratio = _qparams_equal(fq, cq)
    lo, hi = (float(ratio.min()), float(ratio.max())) if ratio.size else (None, None)
    notes.extend(_qat_causes(prep, qp_equal, ratio, mism, own))
    return QatCheck(True, qp_equal, mism, own, int(ints.size), lo, hi, out_equal, tuple(notes))


def _quantize(values: np.ndarray, q: TensorQuant, dtype: str, notes: list[str],
              whose: str) -> np.ndarray | None:
    """``torch.quantize_per_*`` of the float weight with the given qparams (bit-exact)."""
    try:
        if q.qscheme == "per_channel_affine_float_qparams":
            return affine.quantize_per_channel_float_qparams(values, q.scale, q.zero_point,
                                                             q.axis or 0, dtype)
        if q.axis is not None:
            return affine.quantize_per_channel(values, q.scale, q.zero_point, q.axis, dtype)
        return affine.quantize_per_tensor(values, float(q.scale[0]), int(q.zero_point[0]), dtype)
    except (ValueError, KeyError) as exc:
        notes.append(f"could not quantize with {whose} qparams: {exc}")
        return None


def _count_mismatch(expected: np.ndarray | None, ints: np.ndarray) -> int | None:
    if expected is None or expected.shape != ints.shape:
        return None
    return int(np.count_nonzero(expected.astype(np.int64) != ints.astype(np.int64)))


def _qparams_equal(fq: TensorQuant, cq: TensorQuant) -> tuple[bool, np.ndarray]:
    """Whether converted scales/zero points equal the fake-quant's, and the finite
    converted / fake-quant scale ratios."""
    if fq.scale.size != cq.scale.size and fq.scale.size != 1:
        return False, np.zeros(0)
    f32 = np.asarray(fq.scale, np.float64).astype(np.float32)
    c32 = np.asarray(cq.scale, np.float64).astype(np.float32)
    equal = bool(np.array_equal(f32 * np.ones_like(c32), c32)
                 and np.array_equal(fq.zero_point * np.ones_like(cq.zero_point), cq.zero_point))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = c32.astype(np.float64) / f32.astype(np.float64)
    return equal, ratio[np.isfinite(ratio)]


def _qat_causes(prep: Layer, qp_equal: bool, ratio: np.ndarray, mism: int | None,
                own: int | None) -> list[str]:
    out: list[str] = []
    if not qp_equal:
        out.append("the converted weight qparams differ from the fake-quant's: training "
                   "simulated other int values than the model now holds")
        if ratio.size and all(any(_close(float(r), t) for t in FUSED_FAKE_QUANT_RATIOS)
                              for r in ratio):
            out.append("every converted / fake-quant scale ratio is 127/127.5 or 128/127.5: "
                       "torch's fused fake-quant (the default QAT qconfig) computes symmetric "
                       "scales as max(max/127, -min/128), convert's observer as "
                       "max(-min, max)/127.5 (pytorch/pytorch#88800)")
        flag = prep.extras.get("weight_fake_quant.observer_enabled")
        if flag is not None and np.asarray(flag).size and int(np.asarray(flag).reshape(-1)[0]):
            out.append("the weight observer was still enabled when this file was saved: convert "
                       "runs it once more on the final weights, which moves the qparams "
                       "(disable_observer before convert to freeze them)")
    if own:
        out.append("int values differ even with the converted file's own qparams: these "
                   "float weights are not the ones convert quantized")
    elif mism and own == 0:
        out.append("with the converted file's own qparams every int value equals "
                   "round(w / scale) + zero_point: the rounding is exact, only the qparams moved")
    return out


def _close(x: float, target: float, rtol: float = 1e-6) -> bool:
    return abs(x - target) <= rtol * abs(target)


def _with_qat_output(row: LayerDiff, a: Layer, b: Layer) -> LayerDiff:
    """QAT check of a layer without weights (QuantStub, activations): output qparams only."""
    prep, conv = (a, b) if a.mode is Mode.QAT_PREPARED else (b, a)
    if prep.mode is not Mode.QAT_PREPARED or conv.mode in PREPARED_MODES + (Mode.FLOAT,):
        return row
    check = qat_check(prep, conv, np.zeros(0, np.float32), _oriented(row.output, prep is a))
    return replace(row, qat=check)


def _oriented(output: ActChange | None, prepared_is_a: bool) -> ActChange | None:
    """Output qparams as (prepared, converted) for the QAT check."""
    if prepared_is_a or output is None:
        return output
    return ActChange(output.scale_b, output.zero_point_b, output.scale_a, output.zero_point_a)


# --- small helpers --------------------------------------------------------------------


def _act_change(a: ActQuant | None, b: ActQuant | None) -> ActChange | None:
    if a is None or b is None:
        return None
    return ActChange(a.scale, a.zero_point, b.scale, b.zero_point)


def _components(mine: Layer, other: Layer) -> tuple[str, ...]:
    """What ``mine`` has that ``other`` lacks (weight, bias, qparams, observers, ...)."""
    have = _parts(mine)
    missing = _parts(other)
    return tuple(part for part in have if part not in missing)


def _parts(layer: Layer) -> list[str]:
    parts = []
    if layer.weight is not None:
        parts.append("weight")
    if layer.bias is not None:
        parts.append("bias")
    for ref in layer.keys:
        label = ROLE_LABELS.get(ref.role)
        if label is not None and label not in parts and not (
                ref.role is Role.PARAM and layer.weight is not None):
            parts.append(label)
    return parts


def _extras_error(a: Layer, b: Layer) -> dict[str, float]:
    out = {}
    for key, va in a.extras.items():
        vb = b.extras.get(key)
        if vb is not None and np.shape(va) == np.shape(vb) and np.size(va) \
                and np.issubdtype(np.asarray(va).dtype, np.floating):
            out[key] = metrics.max_abs_error(va, vb)
    return out


def _bias_error(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    return metrics.max_abs_error(a, b)


def _presence(a: object | None, b: object | None) -> str:
    if a is not None and b is not None:
        return "both"
    return "a" if a is not None else ("b" if b is not None else "none")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


# --- flags, sorting, summary ----------------------------------------------------------


def _with_flags(row: LayerDiff) -> LayerDiff:
    return replace(row, flags=layer_flags(row))


def layer_flags(row: LayerDiff) -> tuple[str, ...]:
    """Numbers in known-bad ranges, each with the reason it matters."""
    w = row.weight
    if w is None or row.comparison not in QUANTIZED_COMPARISONS:
        return ()
    flags = []
    both = row.comparison is Comparison.QUANTIZED_VS_QUANTIZED
    if w.bits == 8 and not math.isnan(w.sqnr_db) and w.sqnr_db < LOW_SQNR_DB:
        ratio = 10 ** (w.sqnr_db / 20)
        what = ("the two dequantized weights differ by" if both else
                "the quantization error is")
        flags.append(f"SQNR {w.sqnr_db:.1f} dB is below ~{LOW_SQNR_DB:.0f} dB: {what} only "
                     f"{ratio:.1f}x less than the weights (RMS), where int8 weights usually "
                     "start to cost accuracy; look for outlier weights that stretch the scale")
    elif math.isnan(w.sqnr_db):
        flags.append("SQNR is NaN: a weight or scale is NaN/infinite")
    if w.max_error_lsb is not None and w.max_error_lsb > MAX_ROUNDING_LSB + LSB_SLACK:
        flag = _lsb_flag_both(w) if both else _lsb_flag(w)
        if row.qat is not None and row.qat.bit_exact:
            flag += "; QAT trained with exactly these qparams, so training saw the same clipping"
        flags.append(flag)
    if w.dtype is not None and w.max_error_lsb is None:
        flags.append("some scales are zero, negative, NaN or infinite: errors in LSB cannot be "
                     "measured and dequantized values are wrong there")
    return tuple(flags)


def _lsb_flag(w: WeightError) -> str:
    head = (f"max error {w.max_error_lsb:.2f} LSB > 0.5 LSB (the most round-to-nearest "
            "gives inside the range): ")
    if w.clipped_fraction:
        return head + (f"{100 * w.clipped_fraction:.2f} % of the weights lie more than half a "
                       "step outside their channel's range, so the scale is too small for "
                       "them and the clamp to qmin/qmax cut them")
    return head + ("nothing lies outside the range, so the scale does not fit these weights: "
                   "the other file was quantized from other float weights (further training, "
                   "another checkpoint) or with another BatchNorm folding")


def _lsb_flag_both(w: WeightError) -> str:
    head = (f"the dequantized weights differ by up to {w.max_error_lsb:.2f} LSB of B "
            "(> 0.5 LSB: more than re-rounding the same values would give): ")
    if w.clipped_fraction:
        return head + (f"{100 * w.clipped_fraction:.2f} % of A's values lie more than half a "
                       "step outside B's range, so B clips them: the two files were "
                       "calibrated on different ranges")
    return head + "B's grid was fitted to other values (different calibration or weights)"


def sort_rows(rows: list[LayerDiff], sort: str) -> list[LayerDiff]:
    """``sqnr``: worst SQNR first (problems first, layers without weights last);
    ``error``: largest max error in LSB (then absolute) first; ``name``: by name, its
    numbers as numbers (``layers.2`` before ``layers.10``)."""
    if sort == "name":
        return sorted(rows, key=lambda r: natural_key(r.name))
    if sort == "error":
        return sorted(rows, key=_error_key)
    return sorted(rows, key=_sqnr_key)


def _sqnr_key(row: LayerDiff) -> tuple[int, float]:
    if row.comparison is Comparison.SHAPE_MISMATCH:
        return (0, 0.0)
    if row.weight is None:
        return (2, 0.0)
    s = row.weight.sqnr_db
    return (1, -math.inf if math.isnan(s) else s)


def _error_key(row: LayerDiff) -> tuple[int, float, float]:
    if row.comparison is Comparison.SHAPE_MISMATCH:
        return (0, 0.0, 0.0)
    if row.weight is None:
        return (2, 0.0, 0.0)
    w = row.weight
    lsb = w.max_error_lsb if w.max_error_lsb is not None else -1.0
    return (1, -_nan_high(lsb), -_nan_high(w.max_abs_error))


def _nan_high(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _summary(a: Checkpoint, b: Checkpoint, rows: list[LayerDiff], paired: int,
             only_a: Iterable[Layer], only_b: Iterable[Layer]) -> DiffSummary:
    weighted = [r for r in rows if r.weight is not None]
    main = [r for r in weighted if r.comparison in QUANTIZED_COMPARISONS] or weighted
    sqnr = _overall_sqnr(main)
    worst = min(main, key=_sqnr_key).name if main else None
    checks = [r.qat for r in rows if r.qat is not None]
    return DiffSummary(
        comparison=f"{a.stage.value} vs {b.stage.value}",
        layers_a=len(a.layers), layers_b=len(b.layers), layers_paired=paired,
        layers_listed=len(rows),
        layers_quantized=sum(1 for r in rows if r.comparison in QUANTIZED_COMPARISONS),
        weights_compared=len(main), weight_sqnr_db=sqnr, worst_layer=worst,
        flagged_layers=sum(1 for r in rows if r.flags),
        bit_exact=all(bool(c) for c in checks) if checks else None,
        folded=sum(1 for r in rows if r.fold is not None),
        shape_mismatches=sum(1 for r in rows if r.comparison is Comparison.SHAPE_MISMATCH),
        file_size_a=a.file_size, file_size_b=b.file_size,
        unmatched_keys_a=_unmatched(a, only_a), unmatched_keys_b=_unmatched(b, only_b),
    )


def _overall_sqnr(rows: list[LayerDiff]) -> float | None:
    if not rows:
        return None
    signal = sum(r.weight.reference_energy for r in rows if r.weight)
    noise = sum(r.weight.error_energy for r in rows if r.weight)
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _unmatched(ckpt: Checkpoint, only: Iterable[Layer]) -> tuple[str, ...]:
    keys = [ref.key for lay in only for ref in lay.keys]
    keys += [u.key for u in ckpt.unrecognised]
    return tuple(dict.fromkeys(keys))


# --- interpretation -------------------------------------------------------------------


def interpret(rows: list[LayerDiff], s: DiffSummary, weights_only_a: list[str],
              weights_only_b: list[str]) -> tuple[str, ...]:
    """Short sentences on what the numbers mean, worst news first. ``weights_only_*``:
    layers with a weight that have no counterpart on the other side."""
    if s.layers_paired == 0:
        return (f"no layer of A pairs with a layer of B by module path (A has {s.layers_a} "
                f"layers, B has {s.layers_b}): these checkpoints look like different models",)
    lines: list[str] = []
    if s.shape_mismatches:
        lines.append(f"{s.shape_mismatches} layer(s) have different weight shapes under the same "
                     "name: the two files hold different architectures there")
    for row in rows:
        for flag in row.flags:
            if row.comparison is not Comparison.SHAPE_MISMATCH:
                lines.append(f"{row.name}: {flag}")
    for side, names in (("A", weights_only_a), ("B", weights_only_b)):
        if names:
            lines.append(f"weights only in {side}: {', '.join(names)} (no layer of that name on "
                         "the other side: another architecture, or a renamed module)")
    lines.extend(_qat_lines(rows, s))
    lines.extend(_fold_lines(rows))
    lines.extend(_normal_lines(rows, s))
    return tuple(lines)


def _qat_lines(rows: list[LayerDiff], s: DiffSummary) -> list[str]:
    if s.bit_exact is None:
        return []
    if s.bit_exact:
        return ["bit-exact: convert produced exactly the fake-quantized weights "
                "(round(w / scale) + zero_point with the fake-quant's qparams) and the "
                "observers' output qparams"]
    bad = [r for r in rows if r.qat is not None and not r.qat]
    out = [f"not bit-exact: {len(bad)} layer(s) differ from what QAT simulated"]
    causes: dict[str, list[str]] = {}
    for row in bad:
        assert row.qat is not None
        output = _oriented(row.output, row.mode_a == Mode.QAT_PREPARED.value)
        out.extend(f"{row.name}: {line}" for line in qat_numbers(row.qat, output))
        for cause in row.qat.causes:
            causes.setdefault(cause, []).append(row.name)
    for cause, names in causes.items():
        out.append(f"{', '.join(names)}: {cause}")
    return out


def qat_numbers(q: QatCheck, output: ActChange | None) -> list[str]:
    """The measured part of a failed QAT check, one sentence per finding."""
    out = []
    if q.int_mismatches:
        own = (f" ({q.int_mismatches_own_qparams} with the converted file's own qparams)"
               if q.int_mismatches_own_qparams is not None else "")
        out.append(f"{q.int_mismatches} of {q.int_total} int values differ from "
                   f"round(w / scale) + zero_point with the fake-quant's qparams{own}")
    if q.weight_qparams_equal is False and q.scale_ratio_min is not None:
        out.append(f"converted / fake-quant weight scale {q.scale_ratio_min:.6g}.."
                   f"{q.scale_ratio_max:.6g}")
    if q.output_qparams_equal is False and output is not None:
        out.append(f"output qparams differ: the observer says scale {output.scale_a:.6g}, "
                   f"zero point {output.zero_point_a}; the converted layer holds scale "
                   f"{output.scale_b:.6g}, zero point {output.zero_point_b}")
    return out


def _fold_lines(rows: list[LayerDiff]) -> list[str]:
    out = []
    for row in rows:
        f = row.fold
        if f is None:
            continue
        unfolded = (f"; unfolded the SQNR would be {f.unfolded_sqnr_db:.1f} dB"
                    if f.unfolded_sqnr_db is not None and math.isfinite(f.unfolded_sqnr_db)
                    else "")
        out.append(f"BatchNorm {f.batchnorm} folded into {row.name} ({f.side.upper()}) before "
                   f"comparing, {f.eps_message}{unfolded}")
    return out


def _normal_lines(rows: list[LayerDiff], s: DiffSummary) -> list[str]:
    weighted = [r for r in rows if r.weight is not None]
    quantized = [r for r in weighted if r.comparison in QUANTIZED_COMPARISONS]
    if quantized:
        return _quantized_normal_lines(quantized)
    if weighted:
        same = [r for r in weighted if r.weight and r.weight.error_energy == 0
                and not r.bias_max_abs_error]
        if len(same) == len(weighted):
            return [f"all {len(weighted)} paired weight(s) and biases are identical"]
        return [f"{len(weighted) - len(same)} of {len(weighted)} paired weight(s) or biases "
                "differ"]
    return []


def _quantized_normal_lines(quantized: list[LayerDiff]) -> list[str]:
    out = []
    narrow = sorted({r.weight.dtype for r in quantized if r.weight and r.weight.dtype
                     and r.weight.bits is not None and r.weight.bits < 8})
    if not any(r.flags for r in quantized):
        int8 = any(r.weight and r.weight.bits == 8 for r in quantized)
        sqnr = f", SQNR >= {LOW_SQNR_DB:.0f} dB for the int8 ones" if int8 else ""
        out.append(f"all {len(quantized)} quantized weight(s) are in the normal range (max "
                   f"error <= 0.5 LSB: round-to-nearest inside the range{sqnr})")
    if narrow:
        out.append(f"{', '.join(narrow)} weights: the ~{LOW_SQNR_DB:.0f} dB SQNR guide is for "
                   "int8; each bit fewer costs about 6 dB, so these are judged by their error "
                   "in LSB only")
    return out
