"""Checkpoint (+ measurements) -> :class:`~qinspect.gate.report.CheckResult`.

The engine evaluates every catalogue rule whose inputs are available (the file alone,
``--reference``, ``--input``, ``--baseline``), with the check function registered for
it, on every layer it concerns, and records one case per (rule, target) it examined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from qinspect.analyse.health import WeightHealth, weight_health
from qinspect.errors import InputError
from qinspect.gate.baseline import read_baseline
from qinspect.gate.catalogue import RULES, Group, Rule, Severity
from qinspect.gate.config import CheckConfig
from qinspect.gate.report import Case, CheckResult, Finding, LayerReport, NotRun, Status
from qinspect.gate.rules import (
    FILE_CHECKS,
    LAYER_CHECKS,
    Baseline,
    Context,
    LayerMetrics,
    Problem,
)
from qinspect.model import Checkpoint, Layer, Mode


@dataclass(frozen=True)
class Measurements:
    """What ``--reference`` / ``--input`` measured, keyed by the checkpoint's layer names.

    ``weight_problems``: quantized weights the reference could not measure (no counterpart,
    a shape mismatch...), with the reason; QI200 fails for them. ``not_verified``: layers
    ``verify`` could not run on the input, with its reason (QI303 warns).
    """

    metrics: Mapping[str, LayerMetrics]
    overall_weight_sqnr_db: float | None = None
    weight_problems: Mapping[str, str] = field(default_factory=dict)
    not_verified: Mapping[str, str] = field(default_factory=dict)


def run_check(
    checkpoint: Checkpoint,
    config: CheckConfig | None = None,
    *,
    measured: Measurements | None = None,
    baseline: Baseline | None = None,
    reference: str | None = None,
    input: str | None = None,  # mirrors --input
) -> CheckResult:
    """Evaluate the rules on a loaded checkpoint and the measurements already made."""
    config = config or CheckConfig()
    health: dict[str, WeightHealth | None] = {
        lay.name: weight_health(lay.weight) if lay.weight is not None else None
        for lay in checkpoint.layers
    }
    measured = measured or Measurements({})
    ctx = Context(checkpoint, config, health, dict(measured.metrics),
                  measured.overall_weight_sqnr_db, baseline, dict(measured.weight_problems),
                  dict(measured.not_verified))
    active, not_run = _active_rules(reference, input, baseline)
    cases: list[Case] = []
    for rule in active:
        layer_check = LAYER_CHECKS.get(rule.id)
        if layer_check is not None:
            for layer in checkpoint.layers:
                problems = layer_check(layer, config.for_layer(layer.name), ctx)
                if problems is not None:
                    cases.append(_case(rule, layer.name, problems, config))
        else:
            for target, problems in FILE_CHECKS[rule.id](ctx):
                cases.append(_case(rule, target, problems, config))
    layers = tuple(_layer_report(lay, ctx.metrics) for lay in checkpoint.layers)
    return CheckResult(
        path=checkpoint.path, config=config, rules=active, cases=tuple(cases), layers=layers,
        overall_weight_sqnr_db=measured.overall_weight_sqnr_db, reference=reference, input=input,
        baseline=baseline.path if baseline else None, not_run=not_run,
    )


def _active_rules(reference: str | None, input_path: str | None,
                  baseline: Baseline | None) -> tuple[tuple[Rule, ...], tuple[NotRun, ...]]:
    available = {Group.ALWAYS, Group.CONFIG}
    not_run = []
    for group, given, option in ((Group.REFERENCE, reference, "--reference FP32.pt"),
                                 (Group.INPUT, input_path, "--input SAMPLE.npy"),
                                 (Group.BASELINE, baseline, "--baseline REPORT.json")):
        if given is not None:
            available.add(group)
        else:
            ids = ", ".join(r.id for r in RULES if r.group is group)
            not_run.append(NotRun(group, f"{ids} need {option}"))
    return tuple(r for r in RULES if r.group in available), tuple(not_run)


def _case(rule: Rule, target: str, problems: list[Problem], config: CheckConfig) -> Case:
    settings = config.for_layer(target)
    if rule.id in settings.ignore or rule.name in settings.ignore:
        return Case(rule, target, Status.SKIPPED, reason="ignored by configuration")
    severity = rule.severity
    if rule.id == "QI003":
        severity = Severity(config.unrecognised_keys)
    findings = tuple(Finding(rule, target, p.severity or severity, p.message, p.key, p.value,
                             p.limit) for p in problems)
    if not findings:
        return Case(rule, target, Status.PASSED)
    failed = any(f.severity is Severity.ERROR for f in findings)
    status = Status.FAILED if failed else Status.WARNING
    return Case(rule, target, status, findings)


def _layer_report(layer: Layer, metrics: Mapping[str, LayerMetrics]) -> LayerReport:
    return LayerReport(layer.name, layer.kind, layer.mode.value, layer.quantized,
                       metrics.get(layer.name, LayerMetrics()))


# --- the public entry point -------------------------------------------------------------


def check(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    *,
    reference: str | os.PathLike[str] | Checkpoint | None = None,
    input: str | os.PathLike[str] | None = None,  # mirrors --input
    baseline: str | os.PathLike[str] | None = None,
    config: Any = "auto",
    settings: list[str] | None = None,
    **overrides: Any,
) -> CheckResult:
    """Load, measure and run the rules: what ``qinspect check`` does, as a function.

    ``config``: ``"auto"`` searches like the CLI (``qinspect.toml``, then
    ``[tool.qinspect.check]`` in ``./pyproject.toml``); a path reads that file; a mapping
    gives the settings directly; ``None`` uses the built-in defaults. ``settings`` are
    ``KEY=VALUE`` strings (the CLI's ``--set``) and keyword arguments are single settings,
    both applied on top of the file.
    """
    from qinspect.loaders import load

    cfg = resolve_config(config, settings, overrides)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    base = read_baseline(baseline) if baseline is not None else None
    measured = measure(ckpt, reference, input)
    return run_check(ckpt, cfg, measured=measured, baseline=base,
                     reference=_str(reference), input=_str(input))


def resolve_config(config: Any = "auto", settings: list[str] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> CheckConfig:
    """The configuration ``check()`` runs with (see its docstring for ``config``)."""
    from qinspect.gate.config import from_mapping, load_config, with_assignments

    if config is None:
        cfg = CheckConfig()
    elif isinstance(config, CheckConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = from_mapping(config)
    elif isinstance(config, str) and config == "auto":
        cfg = load_config()
    else:
        cfg = load_config(config)
    cfg = with_assignments(cfg, list(settings or []))
    return _with_keywords(cfg, overrides) if overrides else cfg


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value.path if isinstance(value, Checkpoint) else str(value)


def _with_keywords(cfg: CheckConfig, values: Mapping[str, Any]) -> CheckConfig:
    from qinspect.gate.config import FILE_KEYS, LAYER_KEYS, TOP_KEYS, _unknown

    layer_values, file_values = {}, {}
    for key, value in values.items():
        if key in LAYER_KEYS:
            layer_values[key] = LAYER_KEYS[key](f"check({key}=...)", value)
        elif key in FILE_KEYS:
            file_values[key] = FILE_KEYS[key](f"check({key}=...)", value)
        else:
            raise _unknown(key, [k for k in TOP_KEYS if k != "overrides"], "check()")
    return replace(cfg, defaults=replace(cfg.defaults, **layer_values),
                   source=f"{cfg.source} + keyword arguments", **file_values)


def measure(
    checkpoint: Checkpoint,
    reference: str | os.PathLike[str] | Checkpoint | None,
    input_path: str | os.PathLike[str] | None,
) -> Measurements:
    """Per-layer numbers from ``qinspect diff`` (reference) and ``qinspect verify`` (input)."""
    weight: dict[str, float] = {}
    problems: dict[str, str] = {}
    overall = None
    if reference is not None:
        weight, problems, overall = _weight_sqnr(checkpoint, reference)
    outputs: dict[str, LayerMetrics] = {}
    not_verified: dict[str, str] = {}
    if input_path is not None:
        outputs, not_verified = _verify(checkpoint, reference, input_path)
    metrics = {}
    for name in set(weight) | set(outputs):
        base = outputs.get(name, LayerMetrics())
        metrics[name] = replace(base, weight_sqnr_db=weight.get(name))
    return Measurements(metrics, overall, problems, not_verified)


def _verify(
    checkpoint: Checkpoint,
    reference: str | os.PathLike[str] | Checkpoint | None,
    input_path: str | os.PathLike[str],
) -> tuple[dict[str, LayerMetrics], dict[str, str]]:
    """Output SQNR, clipping and kernel agreement of every quantized layer (``verify``)."""
    from qinspect.analyse.verify import verify

    ref = reference.path if isinstance(reference, Checkpoint) else reference
    report = verify(checkpoint, input=input_path, reference=ref)
    metrics: dict[str, LayerMetrics] = {}
    skipped: dict[str, str] = {}
    for row in report.layers:
        if not row.verified:
            skipped[row.name] = row.reason or "not verified"
            continue
        metrics[row.name] = LayerMetrics(
            output_sqnr_db=row.sqnr_db, clipping_fraction=row.clipped,
            kernel_agreement=row.kernel.agreement if row.kernel is not None else None,
            verify_input=row.input_kind.value if row.input_kind is not None else None)
    return metrics, skipped


def _weight_sqnr(
    checkpoint: Checkpoint, reference: str | os.PathLike[str] | Checkpoint
) -> tuple[dict[str, float], dict[str, str], float | None]:
    """Weight SQNR of every quantized weight against the float reference (``diff``)."""
    from qinspect.analyse.compare import compare as diff
    from qinspect.loaders import load

    ref = reference if isinstance(reference, Checkpoint) else load(reference)
    report = diff(ref, checkpoint, sort="name")
    rows = {row.name_b: row for row in report.layers}
    sqnr: dict[str, float] = {}
    problems: dict[str, str] = {}
    for layer in checkpoint.layers:
        if layer.weight is None or not _has_quantized_weight(layer):
            continue
        row = rows.get(layer.name)
        if row is None:
            problems[layer.name] = f"no layer {layer.name!r} in the reference {ref.path}"
        elif row.weight is None:
            problems[layer.name] = row.problem or (
                f"the reference's {row.name!r} has no weight to compare with")
        else:
            sqnr[layer.name] = row.weight.sqnr_db
    if not sqnr and problems:
        raise InputError(f"{ref.path} shares no quantized weight with {checkpoint.path}; pass "
                         "the float checkpoint this one was quantized from as --reference")
    return sqnr, problems, report.summary.weight_sqnr_db


def _has_quantized_weight(layer: Layer) -> bool:
    """Quantized (or fp16 dynamic) weights: what the weight-SQNR rules are about."""
    w = layer.weight
    if w is None or layer.mode is Mode.FLOAT:
        return False
    return w.quant is not None or (layer.mode is Mode.DYNAMIC and w.declared_dtype is not None)
