"""``diff --html``: weight SQNR per layer (worst first), error in LSB and clipping per
layer, the interpretation, and the layer table; built from :func:`diff_json`'s document."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qinspect.render.html import (
    Cell,
    bar_height,
    bullets,
    chart,
    db,
    esc,
    facts,
    layer_picker,
    layer_section,
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
from qinspect.render.text import num, size


def diff_html(doc: dict[str, Any]) -> str:
    """The page for one ``qinspect.diff`` document."""
    body = [_overview(doc), _charts(doc), _details(doc), _layer_table(doc), _unpaired(doc)]
    title = f"qinspect diff: {doc['a']['file']} vs {doc['b']['file']}"
    return page(title, "diff", body, doc)


def _overview(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    rows = [("A", f"{doc['a']['file']} ({doc['a']['format']}, {doc['a']['stage']}, "
                  f"{size(doc['a']['file_size'])})"),
            ("B", f"{doc['b']['file']} ({doc['b']['format']}, {doc['b']['stage']}, "
                  f"{size(doc['b']['file_size'])})"),
            ("comparison", str(s["comparison"])),
            ("layers", f"{s['layers_paired']} paired, {s['layers_listed']} listed, "
                       f"{s['weights_compared']} weights compared"),
            ("weight SQNR", f"{db(s['weight_sqnr_db'])} over all compared weights"),
            ("worst layer", str(s["worst_layer"] or "-")),
            ("flagged layers", str(s["flagged_layers"]))]
    if s.get("bit_exact") is not None:
        rows.append(("bit-exact", str(s["bit_exact"])))
    return section("Comparison", facts(rows),
                   bullets(doc["interpretation"], "explain") if doc["interpretation"] else "")


def _sqnr_layers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [lay for lay in doc["layers"]
            if lay["weight"] is not None and number(lay["weight"]["sqnr_db"]) is not None]
    return sorted(rows, key=lambda lay: sort_key(lay["weight"]["sqnr_db"]) or 0.0)


def _charts(doc: dict[str, Any]) -> str:
    n = len(_sqnr_layers(doc))
    if not n:
        return section("Weight error", para("No weight pair was compared: nothing to chart."))
    h = bar_height(n)
    return section(
        "Weight error per layer",
        chart("chart-sqnr", "Weight SQNR per layer, worst first (dB; green: bit-exact)", h,
              note="About 6 dB per bit: int8 weights with a well-used range reach 35-50 dB. "
                   "Click a bar to open the layer's per-channel SQNR below."),
        '<div class="grid2">',
        chart("chart-lsb", "Error in LSB (steps of the layer's own scale), same order", h,
              note="Round-to-nearest keeps every error within 0.5 LSB; more means the value "
                   "was clipped or the scale/zero point differ from the float weight's."),
        chart("chart-clip", "Weights clipped at the integer range's edges (%), same order",
              h, note="Clipped weights lost their tail: the scale is too small for them."),
        "</div>\n", id="charts")


def _details(doc: dict[str, Any]) -> str:
    """Per layer: its numbers, and the SQNR of each output channel (drawn when opened)."""
    parts = [layer_picker([lay["name"] for lay in doc["layers"]])]
    for i, lay in enumerate(doc["layers"]):
        w = lay["weight"] or {}
        inner = [f'<h3>{esc(lay["name"])} <span class="dim">({esc(lay["kind_b"])}, '
                 f'{esc(lay["comparison"])})</span></h3>\n']
        rows = [("weight SQNR", db(w.get("sqnr_db"))),
                ("error", f"max {lsb(w.get('max_error_lsb'))}, "
                          f"mean {lsb(w.get('mean_error_lsb'))}"),
                ("clipped", pct(w.get("clipped_fraction")))]
        if w.get("granularity"):
            rows.append(("scales", w["granularity"]))
        inner.append(facts(rows) if w else para("No weight pair was compared.", "dim"))
        channels = w.get("channel_sqnr_db") or []
        if len(channels) > 1:
            inner.append(chart(f"chart-channels-{i}", f"SQNR per output channel "
                               f"({len(channels)} channels, dB)", 240,
                               note="One low channel among good ones points at its scale "
                                    "(an outlier weight stretched it) or a clipped value."))
        notes = [*lay["flags"], *([lay["problem"]] if lay["problem"] else [])]
        inner.append(bullets(notes, "notes"))
        parts.append(layer_section(i, *inner))
    return section("Per layer: numbers and SQNR per output channel", *parts, id="details")


def _layer_table(doc: dict[str, Any]) -> str:
    rows, attrs = [], []
    for i, lay in enumerate(doc["layers"]):
        w = lay["weight"] or {}
        name = lay["name"] if lay["name"] == lay["name_b"] else f"{lay['name']} -> {lay['name_b']}"
        rows.append([
            Cell(name, cls="name"),
            Cell(lay["kind_a"] if lay["kind_a"] == lay["kind_b"]
                 else f"{lay['kind_a']} -> {lay['kind_b']}"),
            Cell(lay["comparison"]),
            Cell(db(w.get("sqnr_db")), sort_key(w.get("sqnr_db"))),
            Cell(lsb(w.get("max_error_lsb")), sort_key(w.get("max_error_lsb"))),
            Cell(lsb(w.get("mean_error_lsb")), sort_key(w.get("mean_error_lsb"))),
            Cell(pct(w.get("clipped_fraction")), sort_key(w.get("clipped_fraction"))),
            Cell(num(number(w.get("cosine_similarity")), 6) if w else "-",
                 sort_key(w.get("cosine_similarity"))),
            Cell("; ".join([*lay["flags"], *([lay["problem"]] if lay["problem"] else [])]),
                 cls="warn" if lay["flags"] or lay["problem"] else ""),
        ])
        attrs.append(f' data-layer="{i}"')
    headers = ["layer", "kind", "compared", "weight SQNR", "max error", "mean error",
               "clipped", "cosine", "flags"]
    return section("Layers", table("layers", headers, rows, row_attrs=attrs), id="layers")


def _unpaired(doc: dict[str, Any]) -> str:
    lines = [f"only in A: {o['name']} ({o['kind']})" for o in doc["only_a"]]
    lines += [f"only in B: {o['name']} ({o['kind']})" for o in doc["only_b"]]
    if not lines:
        return ""
    return section("Layers on one side only", bullets(lines, "notes"))


def write_diff_html(path: str | os.PathLike[str], doc: dict[str, Any],
                    inputs: Iterable[str | os.PathLike[str] | None]) -> Path:
    return write_page(path, diff_html(doc), inputs)
