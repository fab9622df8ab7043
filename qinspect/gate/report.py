"""What ``qinspect check`` found, as data: cases, findings and the result of one file.

A :class:`Case` is one rule evaluated on one target (passed, failed, warning or skipped
by configuration), so a JUnit report can list the passes too. A :class:`CheckResult`
is truthy when no error-severity finding remains; its ``exit_code`` is 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from qinspect.gate.catalogue import Group, Rule, Severity
from qinspect.gate.config import CheckConfig
from qinspect.gate.rules import LayerMetrics

CHECK_SCHEMA = "qinspect.check/1"


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    WARNING = "warning"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """One problem a rule found, with the rule's id and the effective severity."""

    rule: Rule
    layer: str
    severity: Severity
    message: str
    key: str | None = None
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class Case:
    """One rule evaluated on one target (a layer name, a key, or "" for the file)."""

    rule: Rule
    layer: str
    status: Status
    findings: tuple[Finding, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class LayerReport:
    """What the JSON report records per layer (and ``--baseline`` reads back)."""

    name: str
    kind: str
    mode: str
    quantized: bool
    metrics: LayerMetrics


@dataclass(frozen=True)
class NotRun:
    group: Group
    reason: str


@dataclass(frozen=True)
class CheckResult:
    """The outcome of ``qinspect check``: truthy when it passed."""

    path: str
    config: CheckConfig
    rules: tuple[Rule, ...]
    cases: tuple[Case, ...]
    layers: tuple[LayerReport, ...]
    overall_weight_sqnr_db: float | None = None
    reference: str | None = None
    input: str | None = None
    baseline: str | None = None
    not_run: tuple[NotRun, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for c in self.cases if c.status is not Status.SKIPPED for f in c.findings)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def passed(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.passed

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def count(self, status: Status) -> int:
        return sum(1 for c in self.cases if c.status is status)
