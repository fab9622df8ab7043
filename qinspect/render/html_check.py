"""``check --html``: the verdict, the findings with failures first (each linking to its
layer's section and highlighting it in the charts), the per-layer metrics charts and the
rules with their explanations. Built from :func:`check_json`'s document."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qinspect.errors import InputError
from qinspect.render.html import (
    Cell,
    anchor,
    bar_height,
    bullets,
    chart,
    db,
    esc,
    facts,
    layer_picker,
    layer_section,
    number,
    page,
    para,
    pct,
    section,
    sort_key,
    table,
    write_page,
)
from qinspect.render.text import num

if TYPE_CHECKING:
    from qinspect.gate.report import CheckResult

SEVERITY_ORDER = {"error": 0, "warning": 1}


def check_html(doc: dict[str, Any]) -> str:
    """The page for one ``qinspect.check`` document."""
    index = {lay["name"]: i for i, lay in enumerate(doc["layers"])}
    body = [_verdict(doc), _findings(doc, index), _charts(doc), _layers(doc),
            _rules(doc)]
    return page(f"qinspect check: {doc['file']}", "check", body, doc)


def _verdict(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    word, cls = ("PASSED", "pass") if doc["passed"] else ("FAILED", "fail")
    line = (f"{word}: {c['checks']} checks, {c['errors']} errors, {c['warnings']} warnings, "
            f"{c.get('skipped', 0)} skipped")
    rows = [("file", doc["file"]), ("config", doc["config"]["source"])]
    rows += [(label, doc[key]) for label, key in (("reference", "reference"),
                                                   ("input", "input"), ("baseline", "baseline"))
             if doc.get(key)]
    overall = (doc.get("overall") or {}).get("weight_sqnr_db")
    if overall is not None:
        rows.append(("weight SQNR", f"{db(overall)} over the whole model"))
    not_run = [f"{n['group']}: {n['reason']}" for n in doc["not_run"]]
    return section("Verdict", f'<p class="verdict {cls}">{esc(line)}</p>\n', facts(rows),
                   bullets(not_run, "notes"))


def _findings(doc: dict[str, Any], index: dict[str, int]) -> str:
    found = sorted(doc["findings"],
                   key=lambda f: (SEVERITY_ORDER.get(f["severity"], 2), f["rule"]))
    if not found:
        return section("Findings", para("No rule failed and none warned.", "ok"), id="findings")
    rows = []
    for f in found:
        layer = f["layer"]
        href = f"#{anchor(index[layer])}" if layer in index else None
        rows.append([
            Cell(f"{f['rule']} {f['name']}"),
            Cell(f["severity"], SEVERITY_ORDER.get(f["severity"], 2),
                 cls="bad" if f["severity"] == "error" else "warn"),
            Cell(layer or f["key"] or "(file)", cls="name", href=href),
            Cell(f["message"]),
            Cell(_value(f["value"]), sort_key(f["value"])),
            Cell(_value(f["limit"])),
            Cell(f["hint"]),
        ])
    headers = ["rule", "severity", "layer", "finding", "value", "limit", "what to do"]
    return section("Findings, failures first", table("findings", headers, rows, None),
                   id="findings")


def _value(v: Any) -> str:
    x = number(v) if not isinstance(v, (list, dict)) else None
    return "-" if v is None else (num(x) if x is not None else str(v))


def _charted(doc: dict[str, Any]) -> dict[str, int]:
    keys = ("weight_sqnr_db", "output_sqnr_db", "clipping_fraction")
    return {k: sum(1 for lay in doc["layers"] if lay[k] is not None) for k in keys}


def _charts(doc: dict[str, Any]) -> str:
    n = _charted(doc)
    parts = []
    if n["weight_sqnr_db"]:
        parts.append(chart("chart-wsqnr", "Weight SQNR per layer (dB); red: a rule failed, "
                           "amber: a warning", bar_height(n["weight_sqnr_db"])))
    if n["output_sqnr_db"]:
        parts.append(chart("chart-osqnr", "Output SQNR per layer (dB)",
                           bar_height(n["output_sqnr_db"])))
    if n["clipping_fraction"]:
        parts.append(chart("chart-clip", "Outputs clipped per layer (%)",
                           bar_height(n["clipping_fraction"])))
    if not parts:
        parts.append(para("No per-layer metric was measured (pass --reference for weight "
                          "SQNR, --input for output SQNR and clipping).", "dim"))
    return section("Per-layer metrics", *parts, id="charts")


def _layers(doc: dict[str, Any]) -> str:
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        by_layer.setdefault(f["layer"], []).append(f)
    parts = [layer_picker([lay["name"] for lay in doc["layers"]])]
    for i, lay in enumerate(doc["layers"]):
        rows = [("kind / mode", f"{lay['kind']} / {lay['mode']}"),
                ("quantized", "yes" if lay["quantized"] else "no"),
                ("weight SQNR", db(lay["weight_sqnr_db"])),
                ("output SQNR", db(lay["output_sqnr_db"])),
                ("clipped outputs", pct(lay["clipping_fraction"])),
                ("kernel agreement", pct(lay["kernel_agreement"]))]
        if lay.get("verify_input"):
            rows.append(("verify input", str(lay["verify_input"])))
        found = [f"{f['severity']} {f['rule']} {f['name']}: {f['message']} ({f['hint']})"
                 for f in by_layer.get(lay["name"], [])]
        parts.append(layer_section(i, f'<h3>{esc(lay["name"])}</h3>\n', facts(rows),
                                   bullets(found, "notes")
                                   or para("No finding for this layer.", "dim")))
    summary = table("layers", ["layer", "kind", "weight SQNR", "output SQNR", "clipped"], [[
        Cell(lay["name"], cls="name", href=f"#{anchor(i)}"), Cell(lay["kind"]),
        Cell(db(lay["weight_sqnr_db"]), sort_key(lay["weight_sqnr_db"])),
        Cell(db(lay["output_sqnr_db"]), sort_key(lay["output_sqnr_db"])),
        Cell(pct(lay["clipping_fraction"]), sort_key(lay["clipping_fraction"])),
    ] for i, lay in enumerate(doc["layers"])])
    return section("Layers", *parts, summary, id="layers")


def _rules(doc: dict[str, Any]) -> str:
    rows = [[Cell(r["id"]), Cell(r["name"]), Cell(r["severity"]), Cell(r["group"]),
             Cell(r["description"]), Cell(r["hint"])] for r in doc["rules"]]
    return section("Rules: what each checks and what to do when it fails",
                   table("rules", ["id", "name", "severity", "group", "checks", "what to do"],
                         rows, None), id="rules")


def write_check_html(path: str | os.PathLike[str], results: Sequence[CheckResult],
                     inputs: Iterable[str | os.PathLike[str] | None]) -> Path:
    """One page for one checkpoint's result (several checkpoints: run once per file)."""
    if len(results) != 1:
        raise InputError("--html writes one page for one checkpoint; run check once per "
                         "file to get a page each")
    from qinspect.render.check import check_json

    return write_page(path, check_html(check_json(results[0])), inputs)
