"""``verify --html``: output SQNR and clipping per layer across the model, end-to-end
numbers, kernel agreement; rows that ran on synthetic input are marked. Built from
:func:`verify_json`'s document."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qinspect.render.html import (
    Cell,
    anchor,
    bar_height,
    bullets,
    chart,
    db,
    facts,
    lsb,
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

SYNTHETIC = "synthetic"


def verify_html(doc: dict[str, Any]) -> str:
    """The page for one ``qinspect.verify`` document."""
    body = [_overview(doc), _charts(doc), _layer_table(doc), _kernel_table(doc),
            _not_run(doc)]
    return page(f"qinspect verify: {doc['file']}", "verify", body, doc)


def synthetic(lay: dict[str, Any]) -> bool:
    return (lay.get("input") or {}).get("source") == SYNTHETIC


def _overview(doc: dict[str, Any]) -> str:
    rows = [("file", doc["file"]), ("mode", doc["mode"]),
            ("engine", f"{doc['engine']}: {doc['engine_reason']}"),
            ("input", doc["input"]), ("float domain", doc["float_domain"])]
    if doc["reference"]:
        rows.append(("reference", doc["reference"]))
    e2e = doc["end_to_end"]
    if e2e is not None:
        rows.append(("end to end", f"SQNR {db(e2e['sqnr_db'])}, max abs error "
                                   f"{num(number(e2e['max_abs_error']))} over "
                                   f"{e2e['elements']} output values"))
    rows.append(("kernel mismatches", f"{doc['kernel_mismatches']} values where torch's "
                                      "kernel and qinspect's integer reference differ"))
    if doc["chain"]:
        rows.append(("chain", doc["chain"]["assumption"]))
    parts = [facts(rows)]
    if doc["worst"]:
        parts.append(para(doc["worst"]["explanation"], "explain"))
    marked = sum(1 for lay in doc["layers"] if synthetic(lay))
    if marked:
        parts.append(f'<p><span class="badge">synthetic input</span> {marked} layer(s) ran '
                     "on synthetic input: a stress test of the arithmetic, not evidence from "
                     "real data (pass --input for that).</p>\n")
    parts.append(bullets(doc["notes"], "notes"))
    return section("Run", *parts)


def _charted(doc: dict[str, Any]) -> int:
    return sum(1 for lay in doc["layers"] if lay["verified"])


def _charts(doc: dict[str, Any]) -> str:
    n = _charted(doc)
    if not n:
        return section("Per layer", para("No layer was run: nothing to chart."))
    h = bar_height(n)
    return section(
        "Output error per layer, in model order",
        '<div class="grid2">',
        chart("chart-sqnr", "Output SQNR per layer (dB); amber: synthetic input", h,
              note="Quantized output vs the float computation on the same input. "
                   "Click a bar to jump to the layer's row."),
        chart("chart-clip", "Outputs clipped at the output range (%), below and above", h,
              note="Outputs outside the calibrated output range saturate: recalibrate "
                   "on representative data if this is large on real input."),
        "</div>\n", id="charts")


def _layer_table(doc: dict[str, Any]) -> str:
    rows, attrs = [], []
    for i, lay in enumerate(doc["layers"]):
        inp = lay["input"] or {}
        k = lay["kernel"] or {}
        rows.append([
            Cell(lay["name"], cls="name", badge="synthetic input" if synthetic(lay) else ""),
            Cell(f"{lay['kind']} / {lay['mode']}"),
            Cell(inp.get("description") or lay["reason"] or "-"),
            Cell(db(lay["sqnr_db"]), sort_key(lay["sqnr_db"])),
            Cell(lsb(lay["max_error_lsb"]), sort_key(lay["max_error_lsb"])),
            Cell(lsb(lay["mean_error_lsb"]), sort_key(lay["mean_error_lsb"])),
            Cell(pct(lay["clipped_fraction"]), sort_key(lay["clipped_fraction"])),
            Cell(pct(k.get("agreement")), sort_key(k.get("agreement")),
                 cls="" if not k else ("ok" if k.get("agree") else "bad")),
            Cell("; ".join(lay["notes"])),
        ])
        cls = ' class="synthetic"' if synthetic(lay) else ""
        attrs.append(f' id="{anchor(i)}" data-layer="{i}"{cls}')
    headers = ["layer", "kind / mode", "input", "output SQNR", "max error", "mean error",
               "clipped", "kernel agreement", "notes"]
    return section("Layers", table("layers", headers, rows, row_attrs=attrs), id="layers")


def _kernel_table(doc: dict[str, Any]) -> str:
    rows = []
    for lay in doc["layers"]:
        k = lay["kernel"]
        if k is None:
            continue
        rows.append([
            Cell(lay["name"], cls="name"),
            Cell(f"{k['engine']}, {k['arithmetic']}"),
            Cell(str(k["op"])),
            Cell(f"{k['mismatches']} of {k['elements']}", k["mismatches"],
                 cls="ok" if k["agree"] else "bad"),
            Cell(pct(k["agreement"]), sort_key(k["agreement"])),
            Cell(f"{num(number(k['max_diff']))} {k['unit']}", sort_key(k["max_diff"])),
        ])
    if not rows:
        return section("Kernel agreement", para("No layer ran torch's kernel.", "dim"))
    headers = ["layer", "engine, arithmetic", "op", "mismatched values", "agreement",
               "max difference"]
    return section("Kernel agreement: torch's kernel vs qinspect's integer reference",
                   para("Both compute the same integer outputs; a mismatch is a kernel "
                        "whose arithmetic differs (rounding, saturation of intermediate "
                        "sums)."),
                   table("kernels", headers, rows), id="kernels")


def _not_run(doc: dict[str, Any]) -> str:
    lines = [f"{lay['name']}: {lay['reason']}" for lay in doc["layers"] if not lay["verified"]]
    return section("Layers not run", bullets(lines, "notes")) if lines else ""


def write_verify_html(path: str | os.PathLike[str], doc: dict[str, Any],
                      inputs: Iterable[str | os.PathLike[str] | None]) -> Path:
    return write_page(path, verify_html(doc), inputs)
