"""The check functions of ``qinspect check``, one per rule of the catalogue.

Each is a small pure function registered under its rule id. Layer rules
(``@layer_rule``) take ``(layer, settings, ctx)`` and return ``None`` when the rule does
not concern that layer, else a list of :class:`Problem` (empty = passed). File rules
(``@file_rule``) take ``ctx`` and return ``[(target, problems), ...]``, one entry per
thing they examined. The engine (:mod:`qinspect.gate.engine`) turns problems into
findings with the rule's id and severity (a problem may lower or raise its own).
Ids, names, severities and texts live in :mod:`qinspect.gate.catalogue`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from qinspect.analyse import packed_checks as P
from qinspect.analyse.health import FLOAT32_TINY, WeightHealth
from qinspect.gate.catalogue import RULES, Severity
from qinspect.gate.config import CheckConfig, LayerSettings
from qinspect.model import (
    ActQuant,
    Checkpoint,
    Layer,
    Level,
    Mode,
    ObserverStats,
    OpKind,
    PackedScheme,
    Role,
    ScaleOp,
    SourceKind,
)
from qinspect.quant.dtypes import qdtype

UNCALIBRATED_SCALE = 1.0
UNCALIBRATED_ZERO_POINT = 0
SHOWN = 3
"""How many bad channels a message names before summarising."""
DEFAULT_MIN_WEIGHT_SQNR_DB = 20.0
"""Weight SQNR floor (per layer and overall) with --reference and no configured value.
Well-scaled int8 weights measure 30-50 dB and 4-bit embeddings ~24 dB (the samples); a
scale off by 10x or a NaN falls below it."""
DEFAULT_MIN_OUTPUT_SQNR_DB = 10.0
"""Output SQNR floor with --input: the samples measure 23-54 dB on their inputs; a layer
whose output range is far too narrow or too wide falls below it."""
DEFAULT_MAX_CLIPPING_FRACTION = 0.25
"""Clipped-output ceiling with --input: the samples clip at most 15 % (fc2 of the MLPs,
whose unfused output range must also cover the negatives ReLU drops)."""
DEFAULT_MIN_KERNEL_AGREEMENT = 1.0
"""verify's reference kernels are bit-exact with torch's on x86-64; any mismatch fails."""
MEASURED_INPUTS = ("user", "chained", "model")
"""verify inputs that come from the user's data; synthetic ones say nothing about it."""


@dataclass(frozen=True)
class Problem:
    """What a rule found wrong: a one-line message naming the layer and the numbers."""

    message: str
    key: str | None = None
    value: float | None = None
    limit: float | None = None
    severity: Severity | None = None
    """None: the rule's severity; set when one finding is milder (or graver) than the
    rule's default, e.g. an unused FloatFunctional at its initial qparams."""


@dataclass(frozen=True)
class LayerMetrics:
    """Per-layer numbers measured against a reference or on an input (when available)."""

    weight_sqnr_db: float | None = None
    output_sqnr_db: float | None = None
    clipping_fraction: float | None = None
    kernel_agreement: float | None = None
    verify_input: str | None = None
    """Where verify's input for this layer came from: user, chained, model or synthetic."""


@dataclass(frozen=True)
class BaselineLayer:
    name: str
    quantized: bool
    weight_sqnr_db: float | None = None
    output_sqnr_db: float | None = None


@dataclass(frozen=True)
class Baseline:
    """A JSON report of an earlier ``qinspect check`` run."""

    path: str
    file: str
    layers: tuple[BaselineLayer, ...]


@dataclass(frozen=True)
class Context:
    """Everything the rules read. Built once per run by the engine."""

    checkpoint: Checkpoint
    config: CheckConfig
    health: Mapping[str, WeightHealth | None]
    metrics: Mapping[str, LayerMetrics] = field(default_factory=dict)
    overall_weight_sqnr_db: float | None = None
    baseline: Baseline | None = None
    weight_problems: Mapping[str, str] = field(default_factory=dict)
    """Quantized weights --reference could not measure, with the reason."""
    not_verified: Mapping[str, str] = field(default_factory=dict)
    """Layers --input could not run (verify's reason)."""


LayerCheck = Callable[[Layer, LayerSettings, Context], "list[Problem] | None"]
FileCheck = Callable[[Context], "list[tuple[str, list[Problem]]]"]
LAYER_CHECKS: dict[str, LayerCheck] = {}
"""Rule id -> check called once per layer (``None``: the rule does not concern it)."""
FILE_CHECKS: dict[str, FileCheck] = {}
"""Rule id -> check called once per file, returning ``[(target, problems), ...]``."""
Check = TypeVar("Check", LayerCheck, FileCheck)


def layer_rule(rule_id: str) -> Callable[[LayerCheck], LayerCheck]:
    """Register the decorated function as the per-layer check of catalogue rule ``rule_id``."""
    return _registrar(LAYER_CHECKS, rule_id)


def file_rule(rule_id: str) -> Callable[[FileCheck], FileCheck]:
    """Register the decorated function as the per-file check of catalogue rule ``rule_id``."""
    return _registrar(FILE_CHECKS, rule_id)


def _registrar(table: dict[str, Check], rule_id: str) -> Callable[[Check], Check]:
    assert rule_id in {r.id for r in RULES}, f"{rule_id} is not in the catalogue"

    def register(fn: Check) -> Check:
        assert rule_id not in LAYER_CHECKS and rule_id not in FILE_CHECKS, f"{rule_id} twice"
        table[rule_id] = fn
        return fn
    return register


def display(name: str) -> str:
    return name if name else "(root)"


# --- helpers ----------------------------------------------------------------------------


def _key(layer: Layer, ending: str, roles: tuple[Role, ...]) -> str | None:
    for ref in layer.keys:
        if ref.role in roles and ref.key.endswith(ending):
            return ref.key
    return None


def _weight_scale_key(layer: Layer) -> str | None:
    if layer.weight is None:
        return None
    return _key(layer, "weight_fake_quant.scale", (Role.WEIGHT_QPARAMS,)) or layer.weight.key


def _weight_zp_key(layer: Layer) -> str | None:
    if layer.weight is None:
        return None
    return _key(layer, "weight_fake_quant.zero_point", (Role.WEIGHT_QPARAMS,)) or layer.weight.key


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "NaN" if np.isnan(x) else ("+inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    return f"{x:.4g}"


def _scale_issue(x: float) -> str | None:
    """Why a scale is unusable ("" when its value says it all), or None when it is fine."""
    if not np.isfinite(x) or x == 0:
        return ""
    if x < 0:
        return "negative"
    if np.float32(x) < FLOAT32_TINY:
        return "subnormal: 1/scale overflows float32"
    return None


def _where(index: int, count: int) -> str:
    return "" if count == 1 else f" at channel {index}"


def _list_bad(values: np.ndarray, issues: list[tuple[int, str]]) -> str:
    """``NaN at channel 3, 0 at channel 5 (2 of 16 channels)``."""
    shown = ", ".join(f"{_fmt(float(values[i]))}{f' ({why})' if why else ''}"
                      f"{_where(i, values.size)}" for i, why in issues[:SHOWN])
    if values.size == 1:
        return shown
    more = ", ..." if len(issues) > SHOWN else ""
    return f"{shown}{more} ({len(issues)} of {values.size} channels)"


def _act_keys(act: ActQuant) -> str:
    return ", ".join(act.keys)


def _assumed(act: ActQuant) -> str:
    return " (activation dtype not stored in eager files: quint8 assumed)" if act.dtype_assumed \
        else ""


def _is_compute_layer(layer: Layer) -> bool:
    """A layer whose weight is a real weight (Linear, Conv, Embedding, RNN), not a norm."""
    return layer.weight is not None and any(r.role is Role.WEIGHT for r in layer.keys)


# --- QI0xx: always on -------------------------------------------------------------------


@layer_rule("QI001")
def check_scales(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Weight and output scales are finite, > 0 and invertible in float32."""
    name = display(layer.name)
    out: list[Problem] = []
    checked = False
    w = layer.weight
    if w is not None and w.quant is not None:
        checked = True
        scales = np.asarray(w.quant.scale, dtype=np.float64).reshape(-1)
        issues = [(i, why) for i, x in enumerate(scales)
                  if (why := _scale_issue(float(x))) is not None]
        if issues:
            bad = float(scales[issues[0][0]])
            out.append(Problem(f"{name}: weight scale is {_list_bad(scales, issues)}",
                               key=_weight_scale_key(layer), value=bad))
    if layer.output is not None:
        checked = True
        why = _scale_issue(layer.output.scale)
        if why is not None:
            key = layer.output.keys[0]
            out.append(Problem(f"{name}: output scale is {_fmt(layer.output.scale)}"
                               f"{f' ({why})' if why else ''} ({key})", key=key,
                               value=layer.output.scale))
    return out if checked else None


@layer_rule("QI002")
def check_zero_points(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Zero points lie inside the dtype's integer range (float zero points are finite)."""
    name = display(layer.name)
    out: list[Problem] = []
    checked = False
    w = layer.weight
    if w is not None and w.quant is not None:
        q = w.quant
        zps = np.asarray(q.zero_point).reshape(-1)
        if q.qscheme == "per_channel_affine_float_qparams":
            checked = True
            bad = [(i, "") for i, z in enumerate(zps.astype(np.float64)) if not np.isfinite(z)]
            if bad:
                out.append(Problem(f"{name}: weight zero point is {_list_bad(zps, bad)}",
                                   key=_weight_zp_key(layer)))
        else:
            info = _dtype_or_none(q.dtype)
            if info is not None:
                checked = True
                lo, hi = info.qmin, info.qmax
                bad = [(i, f"outside {q.dtype} [{lo}, {hi}]") for i, z in enumerate(zps)
                       if not lo <= int(z) <= hi]
                if bad:
                    out.append(Problem(f"{name}: weight zero point is {_list_bad(zps, bad)}",
                                       key=_weight_zp_key(layer),
                                       value=float(zps[bad[0][0]])))
    act = layer.output
    if act is not None:
        info = _dtype_or_none(act.dtype)
        if info is not None:
            checked = True
            if not info.qmin <= act.zero_point <= info.qmax:
                out.append(Problem(
                    f"{name}: output zero point {act.zero_point} ({act.keys[-1]}) outside "
                    f"{act.dtype} [{info.qmin}, {info.qmax}]{_assumed(act)}",
                    key=act.keys[-1], value=float(act.zero_point)))
    return out if checked else None


def _dtype_or_none(name: str) -> Any:
    try:
        return qdtype(name)
    except KeyError:
        return None


@file_rule("QI003")
def check_unrecognised(ctx: Context) -> list[tuple[str, list[Problem]]]:
    """Every key of the file is attributed to a layer."""
    items = ctx.checkpoint.unrecognised
    if not items:
        return [("", [])]
    return [(u.key, [Problem(f"{u.key}: not attributed to any layer ({u.description}; "
                             f"{u.reason})", key=u.key)]) for u in items]


def _never_observed(obs: ObserverStats | None) -> bool:
    if obs is None:
        return False
    lo, hi = np.asarray(obs.min_val), np.asarray(obs.max_val)
    if lo.size == 0 or hi.size == 0:
        return True
    return bool(np.any(np.isposinf(lo)) or np.any(np.isneginf(hi)))


CALIBRATED_MODES = (Mode.STATIC, Mode.QUANTIZE, Mode.QAT_PREPARED, Mode.PTQ_PREPARED)


@layer_rule("QI004")
def check_calibrated(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """No layer keeps torch's initial qparams (1.0 / 0) or an observer that saw nothing."""
    if layer.mode not in CALIBRATED_MODES:
        return None  # dynamic layers store 1.0/0 as unused placeholders
    name = display(layer.name)
    out: list[Problem] = []
    checked = False
    act = layer.output
    if act is not None:
        checked = True
        if act.scale == UNCALIBRATED_SCALE and act.zero_point == UNCALIBRATED_ZERO_POINT:
            out.append(_initial_qparams(layer, act, ctx))
    w = layer.weight
    if layer.mode is Mode.QAT_PREPARED and w is not None and w.quant is not None:
        checked = True
        q = w.quant
        if (np.all(np.asarray(q.scale) == UNCALIBRATED_SCALE)
                and not np.any(np.asarray(q.zero_point))):
            out.append(Problem(f"{name}: weight fake-quant scale = 1.0 and zero point = 0, "
                               "torch's initial values: the weight was never observed",
                               key=_weight_scale_key(layer), value=1.0))
    for what, obs in (("output", layer.output_observer), ("weight", layer.weight_observer)):
        if obs is None:
            continue
        checked = True
        if _never_observed(obs):
            shown = "empty" if np.asarray(obs.min_val).size == 0 else (
                f"min_val = {_fmt(float(np.min(obs.min_val)))}, "
                f"max_val = {_fmt(float(np.max(obs.max_val)))}")
            keys = ", ".join(obs.keys[-2:]) if obs.keys else "observer"
            head = f"{name}: {what} observer still at its initial state ({shown} in {keys})"
            key = obs.keys[0] if obs.keys else None
            if what == "output" and _maybe_unused(layer, ctx):
                out.append(Problem(f"{head}: {MAYBE_UNUSED}", key=key,
                                   severity=Severity.WARNING))
            else:
                out.append(Problem(f"{head}: it never saw data", key=key))
    return out if checked else None


@layer_rule("QI005")
def check_loadable(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """No key torch's module needs is missing (the loader records them per layer)."""
    if not layer.missing_keys:
        return None if layer.mode is Mode.FLOAT else []
    keys = ", ".join(layer.missing_keys)
    return [Problem(f"{display(layer.name)}: {keys} missing: torch's "
                    f"load_state_dict(strict=True) raises {layer.missing_error}",
                    key=layer.missing_keys[0])]


MAYBE_UNUSED = ("this FloatFunctional was either never calibrated (an error) or never "
                "called by forward() (harmless: it is unused); a state_dict cannot tell "
                "which. A TorchScript or .pt2 export of the model, or `qinspect verify "
                "--model`, shows whether forward() calls it")


def _initial_qparams(layer: Layer, act: ActQuant, ctx: Context) -> Problem:
    """1.0 / 0 output qparams: an error, except where the module may just be unused."""
    name = display(layer.name)
    head = (f"{name}: output scale = 1.0 and zero point = 0 ({_act_keys(act)}), torch's "
            "initial values")
    if not _maybe_unused(layer, ctx):
        return Problem(f"{head}: this activation was never calibrated", key=act.keys[0],
                       value=act.scale)
    return Problem(f"{head}: {MAYBE_UNUSED}", key=act.keys[0], value=act.scale,
                   severity=Severity.WARNING)


def _maybe_unused(layer: Layer, ctx: Context) -> bool:
    """A FloatFunctional a state_dict cannot tell unused from uncalibrated (torchvision's
    MobileNet blocks register a ``skip_add`` in every block and call it only in residual
    ones): a QFunctional after convert; before convert, a module with only an output
    observer (FloatFunctional, QuantStub or activation: the keys are the same) that saw
    nothing while other observers of the file did (so calibration did run)."""
    if layer.op is OpKind.FUNCTIONAL:
        return True
    if layer.mode not in (Mode.PTQ_PREPARED, Mode.QAT_PREPARED) or layer.weight is not None:
        return False
    return any(other.output_observer is not None and not _never_observed(other.output_observer)
               for other in ctx.checkpoint.layers if other.weight is not None)


# --- QI1xx: configurable ----------------------------------------------------------------


@layer_rule("QI100")
def check_quantized_required(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Layers matched by ``require_quantized`` (and not by ``allow_float``) are quantized."""
    if not _is_compute_layer(layer) or not ctx.config.must_be_quantized(layer.name):
        return None
    if layer.mode is not Mode.FLOAT:
        return []
    w = layer.weight
    assert w is not None
    patterns = ", ".join(repr(p) for p in ctx.config.require_quantized or ("*",))
    return [Problem(f"{display(layer.name)}: {layer.kind} stayed float ({w.key} is "
                    f"{w.stored_dtype} {list(w.shape)}), but require_quantized ({patterns}) "
                    "matches it and allow_float does not", key=w.key)]


@layer_rule("QI101")
def check_per_channel(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Quantized weights use a per-channel scheme when ``require_per_channel`` is set."""
    w = layer.weight
    if not s.require_per_channel or w is None or w.quant is None:
        return None
    q = w.quant
    if q.axis is not None:
        return []
    size = int(np.prod(w.shape, dtype=np.int64))
    return [Problem(f"{display(layer.name)}: weight is {q.qscheme} (one scale "
                    f"{_fmt(float(q.scale[0]))} for all {size} values of {list(w.shape)}), "
                    "but require_per_channel is set", key=_weight_scale_key(layer))]


def _weight_dtype(layer: Layer) -> tuple[str, bool] | None:
    w = layer.weight
    if w is None or layer.mode is Mode.FLOAT:
        return None
    if w.quant is not None:
        return w.quant.dtype, layer.mode is Mode.QAT_PREPARED
    if layer.mode is Mode.DYNAMIC and w.declared_dtype:
        return w.declared_dtype, False
    return None


@layer_rule("QI102")
def check_weight_dtype(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Quantized weights use one of ``weight_dtypes``."""
    found = _weight_dtype(layer)
    if s.weight_dtypes is None or found is None:
        return None
    dtype, assumed = found
    if dtype in s.weight_dtypes:
        return []
    note = " (fake-quant dtype not stored: qint8 assumed)" if assumed else ""
    return [Problem(f"{display(layer.name)}: weight dtype {dtype}{note} is not in weight_dtypes "
                    f"({', '.join(s.weight_dtypes)})", key=layer.weight.key if layer.weight
                    else None)]


@layer_rule("QI103")
def check_activation_dtype(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Output activations use one of ``activation_dtypes``."""
    act = layer.output
    if s.activation_dtypes is None or act is None:
        return None
    if act.dtype in s.activation_dtypes:
        return []
    return [Problem(f"{display(layer.name)}: output activation dtype {act.dtype}{_assumed(act)} "
                    f"is not in activation_dtypes ({', '.join(s.activation_dtypes)})",
                    key=act.keys[0])]


@layer_rule("QI104")
def check_saturation(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """At most ``max_saturated_fraction`` of a weight's ints are clipped at qmin/qmax.

    Min/max calibration puts each channel's own extremes on the edges (up to two values
    per channel), so only the values at qmin/qmax beyond those count as clipped.
    """
    h = ctx.health.get(layer.name)
    if s.max_saturated_fraction is None or h is None or layer.weight is None:
        return None
    excess = h.excess_saturated_fraction
    if excess <= s.max_saturated_fraction:
        return []
    size = int(np.prod(layer.weight.shape, dtype=np.int64))
    return [Problem(f"{display(layer.name)}: {excess:.2%} of weights clipped at qmin/qmax "
                    f"({h.saturated_fraction:.2%} of {size} at the edges, at most 2 per channel "
                    f"expected), above max_saturated_fraction {s.max_saturated_fraction:.2%}",
                    key=layer.weight.key, value=excess, limit=s.max_saturated_fraction)]


@layer_rule("QI105")
def check_range_used(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """A weight uses at least ``min_range_used`` of its integer range."""
    h = ctx.health.get(layer.name)
    w = layer.weight
    if s.min_range_used is None or h is None or w is None or w.quant is None:
        return None
    if h.range_used >= s.min_range_used:
        return []
    return [Problem(f"{display(layer.name)}: weights use {h.range_used:.1%} of the {w.quant.dtype} "
                    f"range (max |q - zero point| over the tensor), below min_range_used "
                    f"{s.min_range_used:.1%}", key=w.key, value=h.range_used,
                    limit=s.min_range_used)]


# --- QI2xx / QI3xx: measured ------------------------------------------------------------


def _metric(ctx: Context, layer: Layer, attr: str) -> float | None:
    m = ctx.metrics.get(layer.name)
    return getattr(m, attr) if m is not None else None


@layer_rule("QI200")
def check_weight_sqnr(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Per-layer weight SQNR against the float reference (``--reference``)."""
    value = _metric(ctx, layer, "weight_sqnr_db")
    limit = s.min_weight_sqnr_db if s.min_weight_sqnr_db is not None \
        else DEFAULT_MIN_WEIGHT_SQNR_DB
    if value is None:
        why = ctx.weight_problems.get(layer.name)
        if why is None:
            return None
        return [Problem(f"{display(layer.name)}: weight SQNR not measurable: {why}",
                        limit=limit)]
    if value >= limit:
        return []
    return [Problem(f"{display(layer.name)}: weight SQNR {value:.1f} dB against the reference, "
                    f"below min_weight_sqnr_db {limit:g} dB", value=value, limit=limit)]


@file_rule("QI201")
def check_overall_weight_sqnr(ctx: Context) -> list[tuple[str, list[Problem]]]:
    """Weight SQNR over all quantized weights (``--reference``)."""
    value = ctx.overall_weight_sqnr_db
    limit = ctx.config.min_overall_weight_sqnr_db
    if limit is None:
        limit = DEFAULT_MIN_WEIGHT_SQNR_DB
    if value is None:
        return []
    if value >= limit:
        return [("", [])]
    return [("", [Problem(f"overall weight SQNR {value:.1f} dB against the reference, below "
                          f"min_overall_weight_sqnr_db {limit:g} dB", value=value,
                          limit=limit)])]


def _on_real_input(ctx: Context, layer: Layer) -> bool:
    m = ctx.metrics.get(layer.name)
    return m is not None and m.verify_input in MEASURED_INPUTS


@layer_rule("QI300")
def check_output_sqnr(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Per-layer output SQNR of the quantized layer against float (``--input``)."""
    value = _metric(ctx, layer, "output_sqnr_db")
    if value is None or not _on_real_input(ctx, layer):
        return None
    limit = s.min_output_sqnr_db if s.min_output_sqnr_db is not None \
        else DEFAULT_MIN_OUTPUT_SQNR_DB
    if value >= limit:
        return []
    return [Problem(f"{display(layer.name)}: output SQNR {value:.1f} dB on the input, below "
                    f"min_output_sqnr_db {limit:g} dB", value=value, limit=limit)]


@layer_rule("QI301")
def check_clipping(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Share of outputs clipped at the output range (``--input``)."""
    value = _metric(ctx, layer, "clipping_fraction")
    if value is None or not _on_real_input(ctx, layer):
        return None
    limit = s.max_clipping_fraction if s.max_clipping_fraction is not None \
        else DEFAULT_MAX_CLIPPING_FRACTION
    if value <= limit:
        return []
    act = layer.output
    rng = ""
    if act is not None and (info := _dtype_or_none(act.dtype)) is not None:
        lo, hi = act.real_range(info.qmin, info.qmax)
        rng = f" [{_fmt(lo)}, {_fmt(hi)}]"
    return [Problem(f"{display(layer.name)}: {value:.2%} of outputs on the input fall outside "
                    f"the output range{rng} and clip, above max_clipping_fraction {limit:.2%}",
                    value=value, limit=limit)]


@layer_rule("QI302")
def check_kernel_agreement(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Share of outputs where torch's kernel and qinspect's reference agree (``--input``)."""
    value = _metric(ctx, layer, "kernel_agreement")
    if value is None:
        return None
    limit = s.min_kernel_agreement if s.min_kernel_agreement is not None \
        else DEFAULT_MIN_KERNEL_AGREEMENT
    if value >= limit:
        return []
    return [Problem(f"{display(layer.name)}: torch's kernel and qinspect's reference agree on "
                    f"{value:.2%} of outputs, below min_kernel_agreement {limit:.2%}",
                    value=value, limit=limit)]


@layer_rule("QI303")
def check_verified(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    """Every quantized layer could be run on the input (``--input``)."""
    why = ctx.not_verified.get(layer.name)
    if why is not None:
        return [Problem(f"{display(layer.name)}: not verified on the input: {why}")]
    return [] if _metric(ctx, layer, "verify_input") is not None else None


# --- QI4xx: baseline --------------------------------------------------------------------


@file_rule("QI400")
def check_sqnr_regression(ctx: Context) -> list[tuple[str, list[Problem]]]:
    """No layer's SQNR dropped more than ``max_sqnr_drop_db`` since the baseline."""
    if ctx.baseline is None:
        return []
    out: list[tuple[str, list[Problem]]] = []
    names = {lay.name for lay in ctx.checkpoint.layers}
    for old in ctx.baseline.layers:
        if old.name not in names:
            continue
        problems: list[Problem] = []
        limit = ctx.config.for_layer(old.name).max_sqnr_drop_db
        compared = False
        for attr, label, option in (("weight_sqnr_db", "weight SQNR", "--reference"),
                                    ("output_sqnr_db", "output SQNR", "--input")):
            before = getattr(old, attr)
            if before is None:
                continue
            compared = True
            now = (m := ctx.metrics.get(old.name)) and getattr(m, attr)
            if now is None:
                problems.append(Problem(f"{display(old.name)}: the baseline has a {label} of "
                                        f"{before:.1f} dB but this run measured none; pass "
                                        f"{option} to compare", value=None, limit=limit))
            elif before - now > limit:
                problems.append(Problem(f"{display(old.name)}: {label} dropped "
                                        f"{before - now:.1f} dB ({before:.1f} -> {now:.1f} dB), "
                                        f"more than max_sqnr_drop_db {limit:g} dB",
                                        value=before - now, limit=limit))
        if compared:
            out.append((old.name, problems))
    return out


@file_rule("QI401")
def check_layer_missing(ctx: Context) -> list[tuple[str, list[Problem]]]:
    """Every layer of the baseline still exists."""
    if ctx.baseline is None:
        return []
    names = {lay.name for lay in ctx.checkpoint.layers}
    return [(old.name, [] if old.name in names else [Problem(
        f"{display(old.name)}: in the baseline ({ctx.baseline.path}) but not in this checkpoint")])
        for old in ctx.baseline.layers]


@file_rule("QI402")
def check_still_quantized(ctx: Context) -> list[tuple[str, list[Problem]]]:
    """A layer quantized in the baseline is still quantized."""
    if ctx.baseline is None:
        return []
    now = {lay.name: lay for lay in ctx.checkpoint.layers}
    out: list[tuple[str, list[Problem]]] = []
    for old in ctx.baseline.layers:
        lay = now.get(old.name)
        if not old.quantized or lay is None:
            continue
        problems = [] if lay.quantized else [Problem(
            f"{display(old.name)}: quantized in the baseline, float in this checkpoint")]
        out.append((old.name, problems))
    return out


# --- Hugging Face safetensors checkpoints (QI010-QI018) --------------------------------
# Thin wrappers over the pure checks of qinspect.analyse.packed_checks, which know the
# formats; layers without a packed weight or a static input scale are not concerned.

PackedCheck = Callable[[Layer], list[str]]



def _packed(check: PackedCheck, applies: Callable[[Layer], bool] = lambda lay: True
            ) -> Callable[[Layer, LayerSettings, Context], list[Problem] | None]:
    def run(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
        if layer.packed is None or not applies(layer):
            return None
        return [Problem(f"{layer.name}: {m}") for m in check(layer)]
    return run


def _scheme(scheme: PackedScheme) -> Callable[[Layer], bool]:
    return lambda lay: lay.packed is not None and lay.packed.quant.scheme is scheme


def _has_g_idx(layer: Layer) -> bool:
    return layer.packed is not None and any(t.key.endswith("g_idx")
                                            for t in layer.packed.quant.tensors)


layer_rule("QI010")(_packed(P.scale_problems))
layer_rule("QI013")(_packed(P.shape_problems))
layer_rule("QI014")(_packed(P.gptq_v1_overflow, _scheme(PackedScheme.GPTQ_V1)))
layer_rule("QI015")(_packed(P.g_idx_problems, _has_g_idx))
layer_rule("QI018")(_packed(P.bnb_weight_format, _scheme(PackedScheme.BNB_INT8)))


@layer_rule("QI011")
def check_global_scales(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    has_global = bool(P.global_refs(layer)) or (
        layer.input is not None and layer.input.op is ScaleOp.DIVIDE)
    if ctx.checkpoint.hf is None or not has_global:
        return None
    return [Problem(f"{layer.name}: {m}") for m in P.global_scale_problems(layer)]


@layer_rule("QI012")
def check_config_vs_tensors(layer: Layer, s: LayerSettings, ctx: Context
                            ) -> list[Problem] | None:
    if ctx.checkpoint.hf is None or ctx.checkpoint.hf.method is None:
        return None
    if layer.packed is None and not any(n.level is Level.WARNING for n in layer.notes):
        return None
    return [Problem(f"{layer.name}: {m}") for m in P.config_problems(layer)]


@layer_rule("QI016")
def check_input_scale(layer: Layer, s: LayerSettings, ctx: Context) -> list[Problem] | None:
    src = layer.input_source
    if ctx.checkpoint.hf is None or src is None or src.kind is not SourceKind.OWN_SCALE:
        return None
    return [Problem(f"{layer.name}: {m}") for m in P.input_scale_problems(layer)]


@file_rule("QI017")
def check_qkv_input_scales(ctx: Context) -> list[tuple[str, list[Problem]]]:
    if ctx.checkpoint.hf is None:
        return []
    found = P.qkv_input_scales(ctx.checkpoint)
    parents = {lay.name.rpartition(".")[0] for lay in ctx.checkpoint.layers
               if lay.name.rpartition(".")[2] in P.QKV and lay.input is not None}
    bad = dict(found)
    return [(parent, [Problem(f"{parent}: {bad[parent]}")] if parent in bad else [])
            for parent in sorted(parents)]
