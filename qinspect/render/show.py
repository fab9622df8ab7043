"""Summary -> rich renderables (human) or a JSON document (schema ``qinspect.show/1``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.analyse.explain import act_range, explain_layer
from qinspect.analyse.health import WeightHealth
from qinspect.analyse.summary import LayerSummary, Summary
from qinspect.model import ActQuant, Layer, Level, PerBlock, PerGroup, Weight
from qinspect.render.table import (
    Column,
    FitTable,
    Line,
    atom,
    detail_lines,
    joined,
    label,
    name,
    said,
    words,
)
from qinspect.render.text import num, percent, safe, size, text

SHOW_SCHEMA = "qinspect.show/1"
INPUT_LABELS = {
    "not_quantized": "float input",
    "dynamic": "dynamic (per batch)",
    "unknown": "unknown",
}


def render_show(summary: Summary, explain: bool = False) -> RenderableType:
    if summary.checkpoint.hf is not None:
        from qinspect.render.hfshow import render_hf_show

        return render_hf_show(summary, explain)
    parts: list[RenderableType] = [_header(summary), _table(summary)]
    flags = _health_flags(summary)
    if flags is not None:
        parts.append(flags)
    if explain:
        parts.append(_explanations(summary))
    notes = _notes(summary)
    if notes is not None:
        parts.append(notes)
    dead = _dead_weights(summary)
    if dead is not None:
        parts.append(dead)
    parts.append(_unrecognised(summary))
    return Group(*parts)


def _header(s: Summary) -> RenderableType:
    c = s.checkpoint
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("file", text(c.path))
    fmt = f"{c.format}, {c.stage.value}"
    if c.wrapper:
        fmt += f" (inside the '{safe(c.wrapper)}' entry)"
    grid.add_row("format", Text(fmt))
    grid.add_row("layers", Text(f"{s.quantized_layers} quantized, {s.float_layers} float "
                                f"(layers with weights); {len(c.layers)} modules in all"))
    grid.add_row("size", Text(f"{size(c.file_size)} on disk; weights as float32 would be "
                              f"{size(s.fp32_equivalent_bytes)} ({s.compression_ratio:.2f}x)"))
    for hint in s.hints:
        grid.add_row("hint", Text(hint))
    order = c.order or ("module registration order (state_dict metadata)"
                        if c.module_order_known else "key order (no metadata in the file)")
    grid.add_row("order", Text(f"layers listed in {order}"))
    return grid


SHOW_COLUMNS = (Column("layer"), Column("kind"), Column("weight"), Column("input"),
                Column("output"), Column("health"))


def _table(s: Summary) -> FitTable:
    t = FitTable(SHOW_COLUMNS)
    for row in s.layers:
        lay = row.layer
        kind = [label(short_kind(lay.kind)), atom(lay.mode.value.replace("_", " "), "dim")]
        t.add_row([name(lay.name)], kind, _weight_cell(lay.weight), _input_cell(lay),
                  _act_cell(lay.output), _health_cell(row.health))
    return t


def short_kind(kind: object) -> str:
    """The table's label: ``linear (int8 weight, q/dq around activations)`` -> ``linear``;
    the long form is in ``--explain`` and ``--json``."""
    short = safe(kind).split(" (", 1)[0]
    return SHORT_KINDS.get(short, short)


SHORT_KINDS = {"Embedding or EmbeddingBag": "Embedding(Bag)"}
DASH = [atom("-", "dim")]


def _range(what: str, lo: str, hi: str) -> Line:
    """``scale 0.000279..0.000282``, which may break before ``..`` (never in a number)."""
    if lo == hi:
        return [(what, ""), (f" {lo}", "")]
    return [(what, ""), (f" {lo}", ""), (f"..{hi}", "")]


def _weight_cell(w: Weight | None) -> list[Line]:
    if w is None:
        return DASH
    shape = "x".join(map(str, w.shape))
    if w.quant is None:
        return [words(f"{w.stored_dtype} {shape}")]
    q = w.quant
    scheme = ([("per-channel", ""), (f" (axis {q.axis})", "")] if q.axis is not None
              else atom("per-tensor"))
    if isinstance(q.granularity, (PerGroup, PerBlock)):
        scheme = atom(q.qscheme.replace("_affine", "").replace("_", "-"))
    dtype = q.dtype if w.is_quantized else f"float -> {q.dtype}"
    zps = np.unique(q.zero_point)
    return [words(f"{dtype} {shape}"), scheme,
            _range("scale", num(float(np.min(q.scale)), 3), num(float(np.max(q.scale)), 3)),
            _range("zp", num(float(zps.min())), num(float(zps.max())))]


def _input_cell(lay: Layer) -> list[Line]:
    src = lay.input_source
    if src is None:
        return DASH
    if lay.input is not None:
        origin = joined(atom("from "), name(src.layer or "?"),
                        words(" (inferred)") if src.inferred else [])
        return [_range("scale", num(lay.input.scale), num(lay.input.scale)),
                atom(f"zp {lay.input.zero_point}"), origin]
    return [words(INPUT_LABELS.get(src.kind.value, src.kind.value))]


def _act_cell(act: ActQuant | None) -> list[Line]:
    if act is None:
        return DASH
    lo, hi = act_range(act)
    return [_range("scale", num(act.scale), num(act.scale)), atom(f"zp {act.zero_point}"),
            [(f"[{num(lo)},", ""), (f" {num(hi)}]", "")]]


def _health_cell(h: WeightHealth | None) -> list[Line]:
    if h is None:
        return DASH
    style = "yellow" if h.flags else "green"
    lines = [joined(atom(percent(h.range_used), style), words(" of range", style)),
             joined(atom(percent(h.saturated_fraction), style), words(" at edges", style))]
    if h.flags:
        lines.append(words("see below", "bold yellow"))
    return lines


def _health_flags(s: Summary) -> RenderableType | None:
    """Health flags: sentences too long for a cell, listed under the table."""
    lines = [(row.layer.name, flag) for row in s.layers if row.health is not None
             for flag in row.health.flags]
    if not lines:
        return None
    return Group(Text("\nWeight health flags", style="bold yellow"),
                 detail_lines([said(n, f, "yellow") for n, f in lines]))


def _explanations(s: Summary) -> RenderableType:
    parts: list[RenderableType] = [Text("\nWhat each number means", style="bold")]
    for row in s.layers:
        sentences = explain_layer(row.layer)
        if not sentences:
            continue
        parts.append(Text.assemble(text(row.layer.name, "bold cyan"), f" ({row.layer.kind})"))
        parts.append(_bullets(sentences))
    return Group(*parts)


def _bullets(sentences: list[str]) -> Table:
    """Bulleted sentences whose wrapped lines stay indented under their bullet."""
    grid = Table.grid(padding=(0, 0))
    grid.add_column(width=4, no_wrap=True)
    grid.add_column(ratio=1)
    for sentence in sentences:
        grid.add_row("  - ", text(sentence))
    return grid


def _dead_weights(s: Summary) -> RenderableType | None:
    dead = s.checkpoint.dead_weights
    if not dead:
        return None
    total = sum(d.nbytes for d in dead)
    parts: list[RenderableType] = [Text(f"\nDead weight: {len(dead)} stored tensors "
                                        f"({size(total)}) the graph never reads",
                                        style="bold yellow")]
    lines = [Text.assemble(text(d.key, "yellow"), f" ({safe(d.dtype)} "
                           f"[{'x'.join(str(x) for x in d.shape) or 'scalar'}], "
                           f"{size(d.nbytes)})") for d in dead]
    return Group(*parts, detail_lines(lines))


def _notes(s: Summary) -> RenderableType | None:
    lines = [("(file)", n) for n in s.checkpoint.notes]
    lines += [(row.layer.name, n) for row in s.layers for n in row.layer.notes]
    if not lines:
        return None
    return Group(Text("\nNotes", style="bold"), detail_lines(
        [said(who, note.message, "yellow" if note.level is Level.WARNING else "")
         for who, note in lines]))


def _unrecognised(s: Summary) -> RenderableType:
    items = s.checkpoint.unrecognised
    if not items:
        return Text("\nEvery key of the file is attributed to a layer.", style="green")
    parts: list[RenderableType] = [Text(f"\nUnrecognised keys ({len(items)})", style="bold yellow")]
    lines = [Text.assemble(text(u.key, "yellow"), f" ({safe(u.description)}): ", text(u.reason))
             for u in items]
    return Group(*parts, detail_lines(lines))


# --- JSON -----------------------------------------------------------------------------


def show_json(summary: Summary, explain: bool = False) -> dict[str, Any]:
    doc = _show_json_1(summary, explain)
    if summary.checkpoint.hf is not None:
        from qinspect.render.hfshow import hf_show_json

        return hf_show_json(summary, explain, doc)
    return doc


def _show_json_1(summary: Summary, explain: bool) -> dict[str, Any]:
    c = summary.checkpoint
    return {
        "schema": SHOW_SCHEMA,
        "file": c.path,
        "format": c.format,
        "stage": c.stage.value,
        "wrapper": c.wrapper,
        "file_size": c.file_size,
        "fp32_equivalent_bytes": summary.fp32_equivalent_bytes,
        "compression_ratio": summary.compression_ratio,
        "quantized_layers": summary.quantized_layers,
        "float_layers": summary.float_layers,
        "module_order_known": c.module_order_known,
        "hints": list(summary.hints),
        "layers": [_layer_json(row, explain) for row in summary.layers],
        "unrecognised": [{"key": u.key, "description": u.description, "reason": u.reason}
                         for u in c.unrecognised],
        "notes": [{"level": n.level.value, "message": n.message} for n in c.notes],
        "dead_weights": [{"key": d.key, "shape": list(d.shape), "dtype": d.dtype,
                          "nbytes": d.nbytes, "reason": d.reason} for d in c.dead_weights],
    }


def _layer_json(row: LayerSummary, explain: bool) -> dict[str, Any]:
    lay = row.layer
    out: dict[str, Any] = {
        "name": lay.name,
        "kind": lay.kind,
        "mode": lay.mode.value,
        "weight": _weight_json(lay.weight, row.health),
        "bias": _bias_json(lay),
        "input": _input_json(lay),
        "output": _act_json(lay.output),
        "observer": _observer_json(lay),
        "converts_to": [{"from": a, "to": b} for a, b in lay.converts_to],
        "notes": [{"level": n.level.value, "message": n.message} for n in lay.notes],
        "keys": [{"key": k.key, "role": k.role.value} for k in lay.keys],
    }
    if explain:
        out["explanation"] = explain_layer(lay)
    return out


def _weight_json(w: Weight | None, h: WeightHealth | None) -> dict[str, Any] | None:
    if w is None:
        return None
    q = w.quant
    data: dict[str, Any] = {
        "key": w.key,
        "shape": list(w.shape),
        "stored_dtype": w.stored_dtype,
        "declared_dtype": w.declared_dtype,
        "quantized": w.is_quantized,
        "dtype": q.dtype if q else w.stored_dtype,
        "qscheme": q.qscheme if q else None,
        "axis": q.axis if q else None,
        "scale_min": float(np.min(q.scale)) if q else None,
        "scale_max": float(np.max(q.scale)) if q else None,
        "scales": q.scale if q else None,
        "zero_points": q.zero_point if q else None,
        "health": _health_json(h),
    }
    if q is not None and (q.block_size is not None or q.quant_min is not None):
        data["block_size"] = list(q.block_size) if q.block_size is not None else None
        data["quant_range"] = ([q.quant_min, q.quant_max] if q.quant_min is not None
                               else None)
    return data


def _health_json(h: WeightHealth | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {
        "channels": h.channels,
        "range_used": h.range_used,
        "min_channel_range_used": h.min_channel_range_used,
        "saturated_fraction": h.saturated_fraction,
        "excess_saturated_fraction": h.excess_saturated_fraction,
        "scale_spread": h.scale_spread,
        "scale_problems": vars(h.scale_problems),
        "flags": list(h.flags),
    }


def _bias_json(lay: Layer) -> dict[str, Any] | None:
    if lay.bias is None:
        return None
    b = lay.bias
    return {"key": lay.bias_key, "size": int(b.size), "dtype": str(b.dtype),
            "min": float(b.min()) if b.size else None,
            "max": float(b.max()) if b.size else None}


def _input_json(lay: Layer) -> dict[str, Any] | None:
    src = lay.input_source
    if src is None:
        return None
    return {
        "scale": lay.input.scale if lay.input else None,
        "zero_point": lay.input.zero_point if lay.input else None,
        "dtype": lay.input.dtype if lay.input else None,
        "source": src.kind.value,
        "source_layer": src.layer,
        "inferred": src.inferred,
        "explanation": src.explanation,
    }


def _act_json(act: ActQuant | None) -> dict[str, Any] | None:
    if act is None:
        return None
    lo, hi = act_range(act)
    return {"scale": act.scale, "zero_point": act.zero_point, "dtype": act.dtype,
            "dtype_assumed": act.dtype_assumed, "range": [lo, hi], "keys": list(act.keys)}


def _observer_json(lay: Layer) -> dict[str, Any] | None:
    obs = lay.output_observer
    if obs is None:
        return None
    return {"min_val": obs.min_val, "max_val": obs.max_val, "keys": list(obs.keys)}
