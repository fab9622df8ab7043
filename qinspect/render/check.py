"""CheckResult / CheckRun -> human table, JSON, JUnit XML, GitHub lines, Markdown.

One file: JSON schema ``qinspect.check/1`` (what ``--baseline`` reads back). Several files
(or a folder): ``qinspect.check-files/1``, one ``check/1`` report per file; JUnit has one
``<testsuite>`` per file; GitHub lines and Markdown cover every file.

Names from the file (layers, keys) are escaped for each format: ``safe()`` + rich
``Text`` for humans; JSON keeps them exact (``json`` escapes control characters, and
``--baseline`` compares names); JUnit runs ``safe()`` (XML 1.0 cannot hold most
control characters) and then XML escaping; GitHub runs ``safe()`` and then the
workflow-command escaping (``%``, ``\\r``, ``\\n``; plus ``:`` and ``,`` in properties);
Markdown runs ``safe()``, then HTML-escapes and backslash-escapes Markdown punctuation.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.gate.catalogue import Rule, Severity
from qinspect.gate.files import CheckRun, Outcome
from qinspect.gate.report import CHECK_SCHEMA, Case, CheckResult, Finding, Status
from qinspect.gate.rules import display
from qinspect.render import table as tb
from qinspect.render.text import safe, text

FORMATS = ("human", "json", "junit", "github", "markdown")
FILES_SCHEMA = "qinspect.check-files/1"
STATUS_STYLE = {Status.FAILED: ("FAIL", "bold red"), Status.WARNING: ("WARN", "yellow"),
                Status.SKIPPED: ("SKIP", "dim"), Status.PASSED: ("ok", "green")}


# --- human ------------------------------------------------------------------------------


def render_check(result: CheckResult) -> RenderableType:
    parts: list[RenderableType] = [_header(result)]
    findings = [c for c in result.cases if c.status in (Status.FAILED, Status.WARNING)]
    if findings:
        parts += [_findings_table(findings), Text("")]
    parts.append(_rules_table(result))
    parts.append(_verdict(result))
    return Group(*parts)


def _header(r: CheckResult) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("file", text(r.path))
    grid.add_row("config", text(r.config.source))
    for label, value in (("reference", r.reference), ("input", r.input),
                         ("baseline", r.baseline)):
        if value is not None:
            grid.add_row(label, text(value))
    if r.not_run:
        grid.add_row("not run", Text("; ".join(item.reason for item in r.not_run), style="dim"))
    idle = [rule.label for rule in r.rules if not any(c.rule.id == rule.id for c in r.cases)]
    if idle:
        grid.add_row("idle", Text(f"{', '.join(idle)}: nothing to check (configurable rules "
                                  "are off until configured)", style="dim"))
    return grid


FINDING_COLUMNS = (tb.Column("", wraps=False), tb.Column("rule"), tb.Column("layer"),
                   tb.Column("finding"))


def _findings_table(cases: list[Case]) -> tb.FitTable:
    """One row per failed or warned case: its findings, then the rule's hint (dim)."""
    t = tb.FitTable(FINDING_COLUMNS)
    for case in cases:
        label, style = STATUS_STYLE[case.status]
        prefix = f"{display(case.layer)}: " if case.layer else ""
        body = [tb.words(f.message[len(prefix):] if prefix and f.message.startswith(prefix)
                         else f.message) for f in case.findings]
        body.append(tb.words(f"hint: {case.rule.hint}", "dim"))
        t.add_row([tb.atom(label, style)], [tb.label(case.rule.label)],
                  [tb.name(display(case.layer)) if case.layer else tb.atom("(file)")], body)
    return t


RULE_COLUMNS = (tb.Column("rule"), tb.Column("checks", "right", wraps=False),
                tb.Column("result"))


def _rules_table(r: CheckResult) -> tb.FitTable:
    t = tb.FitTable(RULE_COLUMNS, spaced=False)
    for rule in r.rules:
        cases = [c for c in r.cases if c.rule.id == rule.id]
        if cases:
            t.add_row([tb.label(rule.label)], [tb.atom(str(len(cases)))], [_rule_result(cases)])
    return t


def _rule_result(cases: list[Case]) -> tb.Line:
    """``passed``, or the counts that are not passes (``2 failed, 1 warning``)."""
    counts = {s: sum(1 for c in cases if c.status is s) for s in Status}
    parts = [(f"{counts[status]} {word}", STATUS_STYLE[status][1]) for status, word in (
        (Status.FAILED, "failed"), (Status.WARNING, "warning"), (Status.SKIPPED, "skipped"))
        if counts[status]]
    if not parts:
        return tb.atom("passed", "green")
    return tb.joined(*(tb.atom(("" if i == 0 else ", ") + words, style)
                       for i, (words, style) in enumerate(parts)))


def _verdict(r: CheckResult) -> Text:
    errors, warnings = len(r.errors), len(r.warnings)
    checks = len(r.cases)
    tail = (f"{checks} checks: {r.count(Status.PASSED)} passed, {r.count(Status.FAILED)} "
            f"failed, {r.count(Status.WARNING)} warned, {r.count(Status.SKIPPED)} skipped")
    if r.passed:
        extra = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
        return Text(f"\nPASSED{extra}: {tail}", style="bold green")
    return Text(f"\nFAILED: {errors} error{'s' if errors != 1 else ''}, {warnings} "
                f"warning{'s' if warnings != 1 else ''}; {tail}", style="bold red")


def plain_summary(result: CheckResult) -> str:
    """The one-line verdict, for logs."""
    return _verdict(result).plain.strip()


# --- JSON -------------------------------------------------------------------------------


def check_json(result: CheckResult) -> dict[str, Any]:
    from qinspect import __version__

    return {
        "schema": CHECK_SCHEMA,
        "qinspect_version": __version__,
        "file": result.path,
        "passed": result.passed,
        "exit_code": result.exit_code,
        "config": {"source": result.config.source, "settings": result.config.settings_dict()},
        "reference": result.reference,
        "input": result.input,
        "baseline": result.baseline,
        "counts": {"checks": len(result.cases), "errors": len(result.errors),
                   "warnings": len(result.warnings),
                   **{s.value: result.count(s) for s in Status}},
        "findings": [_finding_json(f) for f in result.findings],
        "checks": [_case_json(c) for c in result.cases],
        "rules": [_rule_json(r) for r in result.rules],
        "not_run": [{"group": n.group.value, "reason": n.reason} for n in result.not_run],
        "overall": {"weight_sqnr_db": result.overall_weight_sqnr_db},
        "layers": [{
            "name": lay.name, "kind": lay.kind, "mode": lay.mode, "quantized": lay.quantized,
            "weight_sqnr_db": lay.metrics.weight_sqnr_db,
            "output_sqnr_db": lay.metrics.output_sqnr_db,
            "clipping_fraction": lay.metrics.clipping_fraction,
            "kernel_agreement": lay.metrics.kernel_agreement,
            "verify_input": lay.metrics.verify_input,
        } for lay in result.layers],
    }


def _finding_json(f: Finding) -> dict[str, Any]:
    return {"rule": f.rule.id, "name": f.rule.name, "severity": f.severity.value,
            "layer": f.layer, "key": f.key, "message": f.message, "hint": f.rule.hint,
            "value": f.value, "limit": f.limit}


def _case_json(c: Case) -> dict[str, Any]:
    return {"rule": c.rule.id, "layer": c.layer, "status": c.status.value,
            "reason": c.reason or None}


def _rule_json(r: Rule) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "severity": r.severity.value, "group": r.group.value,
            "description": r.description, "hint": r.hint}


# --- JUnit ------------------------------------------------------------------------------


def junit_xml(result: CheckResult) -> str:
    """One ``<testcase>`` per rule per layer; failures carry the finding and the hint.

    Warnings do not fail a run, so they are passing test cases with the finding in
    ``<system-out>``; ignored rules are ``<skipped>``.
    """
    return junit_run(CheckRun((Outcome(result.path, result),)))


def junit_run(run: CheckRun) -> str:
    """One ``<testsuite>`` per file; a file that could not be read is one ``<error>``."""
    results = [o.result for o in run.outcomes if o.result is not None]
    unread = sum(1 for o in run.outcomes if o.result is None)
    attrs = {"name": "qinspect check",
             "tests": str(sum(len(r.cases) for r in results) + unread),
             "failures": str(sum(r.count(Status.FAILED) for r in results)),
             "errors": str(unread),
             "skipped": str(sum(r.count(Status.SKIPPED) for r in results))}
    suites = ET.Element("testsuites", attrs)
    for outcome in run.outcomes:
        if outcome.result is None:
            _junit_unread(suites, outcome)
        else:
            _junit_suite(suites, outcome.result)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


def _junit_unread(suites: ET.Element, outcome: Outcome) -> None:
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"qinspect check {safe(outcome.path)}", "tests": "1", "failures": "0",
        "errors": "1", "skipped": "0"})
    tc = ET.SubElement(suite, "testcase", {"classname": "qinspect.check.load",
                                           "name": "load", "file": safe(outcome.path)})
    ET.SubElement(tc, "error", {"type": "load", "message": safe(outcome.error or "")})


def _junit_suite(suites: ET.Element, result: CheckResult) -> None:
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"qinspect check {safe(result.path)}", "tests": str(len(result.cases)),
        "failures": str(result.count(Status.FAILED)), "errors": "0",
        "skipped": str(result.count(Status.SKIPPED))})
    props = ET.SubElement(suite, "properties")
    for name, value in (("file", result.path), ("config", result.config.source),
                        ("reference", result.reference), ("input", result.input),
                        ("baseline", result.baseline)):
        if value is not None:
            ET.SubElement(props, "property", {"name": name, "value": safe(value)})
    for case in result.cases:
        target = safe(display(case.layer)) if case.layer else "(file)"
        tc = ET.SubElement(suite, "testcase", {
            "classname": f"qinspect.check.{case.rule.id}.{case.rule.name}",
            "name": f"{case.rule.id} {case.rule.name}: {target}",
            "file": safe(result.path),
        })
        messages = "\n".join(safe(f.message) for f in case.findings)
        if case.status is Status.FAILED:
            first = next(f for f in case.findings if f.severity is Severity.ERROR)
            failure = ET.SubElement(tc, "failure", {
                "type": case.rule.id, "message": f"{case.rule.id} {safe(first.message)}"})
            failure.text = f"{messages}\nhint: {case.rule.hint}"
        elif case.status is Status.SKIPPED:
            ET.SubElement(tc, "skipped", {"message": case.reason})
        elif case.status is Status.WARNING:
            out = ET.SubElement(tc, "system-out")
            out.text = f"warning {case.rule.id}: {messages}\nhint: {case.rule.hint}"


# --- GitHub -----------------------------------------------------------------------------


def _gh_data(value: str) -> str:
    return safe(value).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(value: str) -> str:
    return _gh_data(value).replace(":", "%3A").replace(",", "%2C")


def github_lines(result: CheckResult) -> str:
    """GitHub Actions workflow commands: one ``::error``/``::warning`` line per finding."""
    lines = []
    for f in result.findings:
        level = "error" if f.severity is Severity.ERROR else "warning"
        where = display(f.layer) if f.layer else "file"
        title = _gh_property(f"qinspect {f.rule.id} {f.rule.name} ({where})")
        lines.append(f"::{level} file={_gh_property(result.path)},title={title}::"
                     f"{_gh_data(f.message)} (hint: {_gh_data(f.rule.hint)})")
    if not result.findings:
        lines.append(f"::notice file={_gh_property(result.path)},title=qinspect check::"
                     f"{_gh_data(plain_summary(result))}")
    return "\n".join(lines)


def github_run(run: CheckRun) -> str:
    """Every file's lines; a file that could not be read is one ``::error``."""
    out = []
    for o in run.outcomes:
        if o.result is not None:
            out.append(github_lines(o.result))
        else:
            out.append(f"::error file={_gh_property(o.path)},title=qinspect check (unreadable)::"
                       f"{_gh_data(o.error or '')}")
    return "\n".join(out)


# --- Markdown (GitHub job summary, PR comments) ----------------------------------------

MD_SPECIAL = "\\`*_{}[]()#+-.!|~"


def _md(value: object) -> str:
    """Text from a file, inert in GitHub Markdown: no HTML, no markup, no table breaks."""
    out = safe(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"\\{ch}" if ch in MD_SPECIAL else ch for ch in out)


def _md_verdict(o: Outcome) -> str:
    if o.result is None:
        return "ERROR"
    return "PASSED" if o.result.passed else "FAILED"


def markdown_run(run: CheckRun) -> str:
    """A job summary: one table row per file, then the findings of each file."""
    failed = sum(1 for o in run.outcomes if o.exit_code)
    total = len(run.outcomes)
    head = "PASSED" if run.passed else f"FAILED ({failed} of {total} files)"
    lines = [f"## qinspect check: {head}", "",
             "| result | file | errors | warnings | checks |",
             "|---|---|---:|---:|---:|"]
    for o in run.outcomes:
        r = o.result
        counts = ("-", "-", "-") if r is None else (len(r.errors), len(r.warnings), len(r.cases))
        lines.append(f"| {_md_verdict(o)} | {_md(o.path)} | {counts[0]} | {counts[1]} | "
                     f"{counts[2]} |")
    for o in run.outcomes:
        if o.result is None:
            lines += ["", f"### {_md(o.path)}", "", f"Not checked: {_md(o.error or '')}"]
        elif o.result.findings:
            lines += ["", f"### {_md(o.path)}", "", "| severity | rule | layer | finding |",
                      "|---|---|---|---|"]
            for f in o.result.findings:
                where = _md(display(f.layer)) if f.layer else "(file)"
                lines.append(f"| {f.severity.value} | {f.rule.id} {f.rule.name} | {where} | "
                             f"{_md(f.message)} |")
    return "\n".join(lines) + "\n"


# --- several files: human and JSON -----------------------------------------------------


def summary_line(o: Outcome) -> Text:
    """One line per file: verdict, file, counts (or why it could not be checked)."""
    if o.result is None:
        return Text.assemble(("ERROR   ", "bold red"), text(o.path), ": ",
                             text(o.error or ""))
    r = o.result
    e, w, n = len(r.errors), len(r.warnings), len(r.cases)
    counts = f"{_plural(e, 'error')}, " if e else ""
    counts += f"{_plural(w, 'warning')}, " if w or e else ""
    style = "bold green" if r.passed else "bold red"
    return Text.assemble((f"{'PASSED' if r.passed else 'FAILED':<8}", style), text(o.path),
                         f"  ({counts}{_plural(n, 'check')})")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_run(run: CheckRun) -> RenderableType:
    """One summary line per file, each file's findings under it, then the totals."""
    parts: list[RenderableType] = []
    for o in run.outcomes:
        parts.append(summary_line(o))
        findings = [c for c in (o.result.cases if o.result is not None else ())
                    if c.status in (Status.FAILED, Status.WARNING)]
        if findings:
            parts.append(_findings_table(findings))
    counts = {word: sum(1 for o in run.outcomes if _md_verdict(o) == word)
              for word in ("PASSED", "FAILED", "ERROR")}
    total = len(run.outcomes)
    parts.append(Text(f"\n{'PASSED' if run.passed else 'FAILED'}: {total} file"
                      f"{'s' if total != 1 else ''}: {counts['PASSED']} passed, "
                      f"{counts['FAILED']} failed, {counts['ERROR']} not readable",
                      style="bold green" if run.passed else "bold red"))
    return Group(*parts)


def run_json(run: CheckRun) -> dict[str, Any]:
    from qinspect import __version__

    return {
        "schema": FILES_SCHEMA,
        "qinspect_version": __version__,
        "passed": run.passed,
        "exit_code": run.exit_code,
        "files": [{"file": o.path, "exit_code": o.exit_code, "error": o.error,
                   "report": check_json(o.result) if o.result is not None else None}
                  for o in run.outcomes],
    }


# --- writing ----------------------------------------------------------------------------


def render_run_text(run: CheckRun, fmt: str) -> str:
    """A several-file report as text in one format."""
    if fmt == "json":
        from qinspect.render.jsonout import dumps

        return dumps(run_json(run))
    if fmt == "junit":
        return junit_run(run)
    if fmt == "github":
        return github_run(run)
    if fmt == "markdown":
        return markdown_run(run)
    return _plain(render_run(run))


def render_text(result: CheckResult, fmt: str) -> str:
    """The report as text in one of the machine formats (or plain human text)."""
    if fmt == "json":
        from qinspect.render.jsonout import dumps

        return dumps(check_json(result))
    if fmt == "junit":
        return junit_xml(result)
    if fmt == "github":
        return github_lines(result)
    if fmt == "markdown":
        return markdown_run(CheckRun((Outcome(result.path, result),)))
    return _plain(render_check(result))


def _plain(renderable: RenderableType) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open(os.devnull, "w"),
                      color_system=None, highlight=False)
    console.print(renderable)
    console.file.close()
    return console.export_text()
