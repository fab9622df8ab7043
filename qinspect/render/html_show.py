"""``show --html``: the layer table, range use and saturation across the model, and per
layer its per-channel (or per-group) scales and a histogram of the stored integers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from qinspect.analyse.summary import Summary
from qinspect.model import Weight
from qinspect.quant.dtypes import qdtype
from qinspect.render.html import (
    Cell,
    anchor,
    bar_height,
    bullets,
    chart,
    esc,
    facts,
    layer_picker,
    layer_section,
    page,
    para,
    pct,
    section,
    sort_key,
    table,
    write_page,
)
from qinspect.render.show import show_json
from qinspect.render.text import num, size

MAX_POINTS = 4096
"""Longer scale series are drawn as their min/max per bucket (the page stays small)."""
MAX_BINS = 256
"""Dtypes with more integer values than this (int32...) are binned into this many bins."""


def show_html(summary: Summary) -> str:
    doc = show_json(summary, explain=True)
    layers = doc["layers"]
    extras = [_layer_charts(row.layer.weight) for row in summary.layers]
    for entry, extra in zip(layers, extras, strict=True):
        if entry["weight"] is not None:  # the full arrays go in as chart series instead
            entry["weight"].pop("scales", None)
            entry["weight"].pop("zero_points", None)
        entry["charts"] = extra
    body = [_overview(doc), _model_chart(doc), _layer_table(doc), _details(doc), _file_notes(doc)]
    return page(f"qinspect show: {doc['file']}", "show", body, doc)


def _overview(doc: dict[str, Any]) -> str:
    rows = [("file", doc["file"]), ("format", f"{doc['format']}, {doc['stage']}"),
            ("layers", f"{doc['quantized_layers']} quantized, {doc['float_layers']} float "
                       f"(layers with weights); {len(doc['layers'])} listed"),
            ("size", f"{size(doc['file_size'])} on disk; weights as float32 would be "
                     f"{size(doc['fp32_equivalent_bytes'])} "
                     f"({num(doc['compression_ratio'], 3)}x)")]
    rows += [("hint", h) for h in doc["hints"]]
    return section("Checkpoint", facts(rows))


def _model_chart(doc: dict[str, Any]) -> str:
    n = sum(1 for lay in doc["layers"] if (lay["weight"] or {}).get("health"))
    if not n:
        return section("Range use", para("No layer has a quantized weight to chart."))
    return section(
        "Range use and saturation across the model",
        chart("chart-range", "Share of the integer range used, and share of weights at "
              "the range's edges, per layer (%)", bar_height(n),
              note="Click a bar to open that layer's charts below. A weight that uses "
                   "little of its range wastes precision; many values on an edge suggest "
                   "clipping."))


def _layer_table(doc: dict[str, Any]) -> str:
    rows = []
    for i, lay in enumerate(doc["layers"]):
        w = lay["weight"] or {}
        h = w.get("health") or {}
        rows.append([
            Cell(lay["name"], href=f"#{anchor(i)}", cls="name"),
            Cell(f"{lay['kind']} / {lay['mode'].replace('_', ' ')}"),
            Cell(_weight_text(w) if w or not lay.get("packed") else _packed_text(lay["packed"])),
            Cell(f"{num(w['scale_min'], 3)} .. {num(w['scale_max'], 3)}"
                 if w.get("scale_min") is not None else "-", sort_key(w.get("scale_max"))),
            Cell(pct(h.get("range_used")), sort_key(h.get("range_used"))),
            Cell(pct(h.get("saturated_fraction")), sort_key(h.get("saturated_fraction"))),
            Cell(", ".join(h.get("flags") or []), cls="warn" if h.get("flags") else ""),
        ])
    headers = ["layer", "kind / mode", "weight", "scale", "range used", "at edges", "flags"]
    return section("Layers", table("layers", headers, rows), id="layers")


def _weight_text(w: dict[str, Any]) -> str:
    if not w:
        return "-"
    shape = "x".join(map(str, w["shape"]))
    if w.get("qscheme") is None:
        return f"{w['stored_dtype']} [{shape}]"
    scheme = w["qscheme"].replace("_affine", "").replace("_", "-")
    if w.get("axis") is not None:
        scheme += f" (axis {w['axis']})"
    return f"{w['dtype']} [{shape}] {scheme}"


def _packed_text(p: dict[str, Any]) -> str:
    """A packed (Hugging Face) weight, from show/2's ``packed``: element, grouping, format."""
    element = (p.get("element") or {}).get("name", "?")
    grouping = (p.get("granularity") or {}).get("type", "")
    shape = "x".join(map(str, p.get("shape") or []))
    return f"{element} {grouping} [{shape}] {p.get('format', '')}"


def _details(doc: dict[str, Any]) -> str:
    parts = [layer_picker([lay["name"] for lay in doc["layers"]])]
    for i, lay in enumerate(doc["layers"]):
        charts = lay["charts"]
        inner = [f'<h3>{esc(lay["name"])} <span class="dim">({esc(lay["kind"])})</span></h3>\n']
        if charts["scales"]:
            inner.append(chart(f"chart-scales-{i}", charts["scales_title"], 260,
                               note=charts["scales_note"]))
        if charts["histogram"]:
            inner.append(chart(f"chart-hist-{i}", charts["histogram"]["title"], 260,
                               note="Dashed lines: the integer range of the dtype "
                                    "(values beyond it cannot be stored)."))
        if not charts["scales"] and not charts["histogram"]:
            inner.append(para("No quantized weight: nothing to chart for this layer.", "dim"))
        inner.append(bullets(lay.get("explanation") or [], "explain"))
        inner.append(bullets([f"{n['level']}: {n['message']}" for n in lay["notes"]], "notes"))
        parts.append(layer_section(i, *inner))
    return section("Per layer: scales, stored integers and what they mean", *parts,
                   id="details")


def _file_notes(doc: dict[str, Any]) -> str:
    lines = [f"{n['level']}: {n['message']}" for n in doc["notes"]]
    lines += [f"unrecognised key {u['key']} ({u['description']}): {u['reason']}"
              for u in doc["unrecognised"]]
    lines += [f"dead weight {d['key']} ({d['dtype']}, {size(d['nbytes'])}): {d['reason']}"
              for d in doc["dead_weights"]]
    if not lines:
        return section("Keys", para("Every key of the file is attributed to a layer."))
    return section("Notes and unattributed keys", bullets(lines, "notes"))


# --- chart series -----------------------------------------------------------------------


def _layer_charts(w: Weight | None) -> dict[str, Any]:
    out: dict[str, Any] = {"scales": None, "scales_title": "", "scales_note": "",
                           "histogram": None}
    if w is None or w.quant is None:
        return out
    q = w.quant
    scales = np.asarray(q.scale, dtype=np.float64).reshape(-1)
    if scales.size > 1:
        out["scales"] = _series(scales)
        per = "channel" if q.axis is not None and q.block_size is None else "group/block"
        out["scales_title"] = f"Scale per {per} ({scales.size} values)"
        out["scales_note"] = ("One scale is 100x the others? That channel's small weights "
                              "round to zero." if scales.size <= MAX_POINTS else
                              f"{scales.size} scales, drawn as min and max of "
                              f"{MAX_POINTS} buckets.")
    if w.is_quantized:
        out["histogram"] = _int_histogram(np.asarray(w.values), q.dtype, q.quant_min,
                                          q.quant_max)
    return out


def _series(values: np.ndarray) -> dict[str, Any]:
    if values.size <= MAX_POINTS:
        return {"x": list(range(values.size)), "min": values, "max": None}
    edges = np.linspace(0, values.size, MAX_POINTS + 1).astype(np.int64)
    lo = np.minimum.reduceat(values, edges[:-1])
    hi = np.maximum.reduceat(values, edges[:-1])
    return {"x": edges[:-1].tolist(), "min": lo, "max": hi}


def _int_histogram(values: np.ndarray, dtype: str, quant_min: int | None,
                   quant_max: int | None) -> dict[str, Any] | None:
    """Counts of each stored integer over the dtype's whole range (bins for wide dtypes),
    with the range that the quantizer may use (a narrower ``quant_min..quant_max``)."""
    try:
        d = qdtype(dtype)
    except KeyError:
        return None
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return None
    lo, hi = d.qmin, d.qmax
    flat = values.reshape(-1).astype(np.int64)
    outside = int(np.count_nonzero((flat < lo) | (flat > hi)))
    span = hi - lo + 1
    width = max(1, -(-span // MAX_BINS))
    inside = flat[(flat >= lo) & (flat <= hi)]
    counts = np.bincount((inside - lo) // width, minlength=-(-span // width))
    what = "value" if width == 1 else f"bin of {width} values"
    return {"title": f"Stored integers ({d.name}, {values.size} values; count per {what})",
            "lo": lo, "hi": hi, "width": width, "counts": counts,
            "range": [quant_min if quant_min is not None else lo,
                      quant_max if quant_max is not None else hi],
            "outside": outside}


def write_show_html(path: str | os.PathLike[str], summary: Summary,
                    inputs: Iterable[str | os.PathLike[str] | None]) -> Path:
    return write_page(path, show_html(summary), inputs)
