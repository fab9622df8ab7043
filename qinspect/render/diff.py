"""DiffReport -> rich renderables (human) or a JSON document (schema ``qinspect.diff/1``)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.analyse.diff import (
    ActChange,
    Comparison,
    DiffReport,
    DiffSummary,
    FoldReport,
    LayerDiff,
    QatCheck,
    QuantChange,
    SideOnly,
    WeightError,
)
from qinspect.model import Checkpoint
from qinspect.render import table as tb
from qinspect.render.show import short_kind
from qinspect.render.text import num, safe, size, text

DIFF_SCHEMA = "qinspect.diff/1"
COMPARED = {
    Comparison.FLOAT_VS_QUANTIZED: "float vs quantized",
    Comparison.PREPARED_VS_CONVERTED: "prepared vs converted",
    Comparison.QUANTIZED_VS_QUANTIZED: "quantized vs quantized",
    Comparison.FLOAT_VS_FLOAT: "float vs float",
    Comparison.QPARAMS_ONLY: "no weights",
    Comparison.WEIGHT_ONE_SIDE: "weight on one side",
    Comparison.SHAPE_MISMATCH: "SHAPE MISMATCH",
    Comparison.UNSUPPORTED: "not compared",
}
MAX_KEYS_LISTED = 8


def render_diff(report: DiffReport) -> RenderableType:
    parts: list[RenderableType] = [_header(report)]
    if report.layers:
        parts.append(_table(report))
    parts.append(_interpretation(report))
    one_sided = _one_sided_parts(report)
    if one_sided is not None:
        parts.append(one_sided)
    parts.extend(_only(report.only_a, "A", report.a))
    parts.extend(_only(report.only_b, "B", report.b))
    return Group(*parts)


# --- header ---------------------------------------------------------------------------


def _header(r: DiffReport) -> RenderableType:
    s = r.summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, c, file_size in (("A", r.a, s.file_size_a), ("B", r.b, s.file_size_b)):
        grid.add_row(label, Text.assemble(text(c.path), f"  ({c.stage.value}, {size(file_size)})"))
    grid.add_row("layers", Text(_layers_line(r)))
    grid.add_row("weights", Text(_sqnr_line(s)))
    grid.add_row("size", Text(_size_line(s)))
    if s.bit_exact is not None:
        grid.add_row("QAT", Text("bit-exact" if s.bit_exact else "NOT bit-exact (see below)",
                                 style="green" if s.bit_exact else "yellow"))
    if r.layer_glob is not None:
        grid.add_row("filter", Text.assemble("layers matching ", text(r.layer_glob)))
    return grid


def _layers_line(r: DiffReport) -> str:
    s = r.summary
    listed = f" ({s.layers_listed} listed)" if s.layers_listed != s.layers_paired else ""
    line = (f"{s.layers_paired} paired{listed}, {s.layers_quantized} with a quantized weight; "
            f"{len(r.only_a)} only in A, {len(r.only_b)} only in B")
    if s.folded:
        line += f"; {s.folded} BatchNorm folded"
    if s.shape_mismatches:
        line += f"; {s.shape_mismatches} shape mismatch(es)"
    return line


def _sqnr_line(s: DiffSummary) -> str:
    if s.weight_sqnr_db is None:
        return "no weights compared"
    line = f"overall SQNR {db(s.weight_sqnr_db)} over {s.weights_compared} weight(s)"
    if s.worst_layer is not None and s.weights_compared > 1:
        line += f"; worst: {safe(s.worst_layer)}"
    return line


def _size_line(s: DiffSummary) -> str:
    line = f"A {size(s.file_size_a)}, B {size(s.file_size_b)} on disk"
    if s.file_size_a and s.file_size_b and s.file_size_a != s.file_size_b:
        ratio = s.file_size_a / s.file_size_b
        line += f" (B is {ratio:.2f}x smaller)" if ratio > 1 else f" (B is {1 / ratio:.2f}x larger)"
    return line


# --- table ---------------------------------------------------------------------------


DIFF_COLUMNS = (tb.Column("layer"), *(tb.Column(h, "right", wraps=False)
                                      for h in ("SQNR", "error", "clipped", "cosine")),
                tb.Column("notes"))


def _table(r: DiffReport) -> tb.FitTable:
    t = tb.FitTable(DIFF_COLUMNS)
    for row in r.layers:
        t.add_row(_layer_cell(row), *_weight_cells(row.weight), _notes_cell(row))
    return t


def _layer_cell(row: LayerDiff) -> list[tb.Line]:
    cell = [tb.name(row.name)]
    if row.name_b != row.name:
        cell.append(tb.joined(tb.atom("= B "), tb.name(row.name_b)))
    kind = row.kind_b if row.mode_b != "float" else row.kind_a
    cell.append(tb.label(short_kind(kind), "dim"))
    cell.append(tb.joined(tb.atom(row.mode_a.replace("_", " "), "dim"),
                          tb.atom(f" -> {row.mode_b}".replace("_", " "), "dim")))
    return cell


def _weight_cells(w: WeightError | None) -> list[list[tb.Line]]:
    if w is None:
        return [[tb.atom("-", "dim")] for _ in range(4)]
    error = [tb.atom(f"max {_num(w.max_abs_error)}"), tb.atom(f"mean {_num(w.mean_abs_error)}")]
    if w.max_error_lsb is not None:
        error.append(tb.atom(f"max {lsb(w.max_error_lsb)}"))
    clipped = (tb.atom(pct(w.clipped_fraction)) if w.clipped_fraction is not None
               else tb.atom("-", "dim"))
    return [[tb.atom(db(w.sqnr_db))], error, [clipped], [tb.atom(cosine(w.cosine_similarity))]]


def _notes_cell(row: LayerDiff) -> list[tb.Line]:
    lines: list[tuple[str, str]] = []
    if row.problem:
        lines.append((row.problem, "bold red"))
    lines.append((COMPARED[row.comparison], "dim"))
    if row.weight is not None and row.weight.dtype:
        lines[-1] = (f"{COMPARED[row.comparison]} ({row.weight.dtype})", "dim")
    if row.weight is not None and row.weight.granularity:
        lines.append((row.weight.granularity, "dim"))
    if row.fold is not None:
        lines.append((f"BatchNorm {row.fold.batchnorm} folded (eps {row.fold.eps:g})", "cyan"))
    if row.quant_change is not None:
        lines.extend((line, "") for line in quant_change_lines(row.quant_change))
    if row.output is not None and not row.output.equal:
        lines.append((output_line(row.output), ""))
    if row.qat is not None:
        lines.append(_qat_cell(row.qat))
    if row.bias_in == "both" and row.bias_max_abs_error:
        lines.append((f"bias max |err| {num(row.bias_max_abs_error, 3)}", ""))
    elif row.bias_in in ("a", "b"):
        lines.append((f"bias only in {row.bias_in.upper()}", "yellow"))
    if row.flags and row.comparison is not Comparison.SHAPE_MISMATCH:
        lines.append(("see below", "yellow"))
    return [tb.words(safe(line), style) for line, style in lines]


def _qat_cell(q: QatCheck) -> tuple[str, str]:
    if q.bit_exact:
        return ("QAT: bit-exact", "green")
    if q.int_mismatches:
        return (f"QAT: {q.int_mismatches}/{q.int_total} ints differ", "yellow")
    if q.weight_qparams_equal is False:
        return ("QAT: weight qparams differ", "yellow")
    return ("QAT: output qparams differ", "yellow")


def quant_change_lines(c: QuantChange) -> list[str]:
    out = []
    if c.scheme_a != c.scheme_b or c.dtype_a != c.dtype_b:
        out.append(f"{c.dtype_a} {c.scheme_a} -> {c.dtype_b} {c.scheme_b}")
    if c.scales_changed is not None:
        rel = (f" (max {pct(c.max_scale_change)})"
               if c.scales_changed and c.max_scale_change is not None else "")
        out.append(f"{c.scales_changed}/{c.channels} scales changed{rel}")
    if c.zero_points_changed:
        out.append(f"{c.zero_points_changed}/{c.channels} zero points changed")
    if c.int_changed_fraction is not None:
        out.append(f"{pct(c.int_changed_fraction)} of ints changed")
    return out


def output_line(o: ActChange) -> str:
    return (f"output scale {num(o.scale_a)} -> {num(o.scale_b)}, "
            f"zp {o.zero_point_a} -> {o.zero_point_b}")


# --- interpretation and one-sided layers ----------------------------------------------


def _interpretation(r: DiffReport) -> RenderableType:
    lines = r.interpretation or ("nothing to interpret: no weights were compared",)
    return _bullets("Interpretation", [(line, "yellow" if _is_warning(line) else "")
                                       for line in lines])


def _bullets(title: str, lines: list[tuple[str, str]]) -> RenderableType:
    """A bold title and ``-`` bullets whose wrapped lines stay indented."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for line, style in lines:
        grid.add_row("  -", Text(safe(line), style=style))
    return Group(Text(f"\n{title}", style="bold"), grid)


def _one_sided_parts(r: DiffReport) -> RenderableType | None:
    """What paired layers hold on one side only, grouped so each combination is said once."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for row in module_order(r):
        if row.only_a or row.only_b:
            groups.setdefault((row.only_a, row.only_b), []).append(row.name)
    if not groups:
        return None
    lines = []
    for (only_a, only_b), names in groups.items():
        said = [f"A has {', '.join(only_a)}" if only_a else "",
                f"B has {', '.join(only_b)}" if only_b else ""]
        lines.append((f"{', '.join(names)}: {'; '.join(x for x in said if x)}", "dim"))
    return _bullets("Present on one side only (paired layers)", lines)


def module_order(r: DiffReport) -> list[LayerDiff]:
    """The table's rows in A's module (or graph) order, whatever ``--sort`` chose."""
    position = {lay.name: i for i, lay in enumerate(r.a.layers)}
    return sorted(r.layers, key=lambda row: position.get(row.name, len(position)))


def _is_warning(line: str) -> bool:
    words = ("below", "> 0.5 LSB", "not bit-exact", "differ", "look like", "NaN", "no eps",
             "shapes")
    return any(w in line for w in words) and not line.startswith("all ")


def _only(items: tuple[SideOnly, ...], side: str, ckpt: Checkpoint) -> list[RenderableType]:
    unrec = ckpt.unrecognised
    if not items and not unrec:
        return []
    title = f"\nOnly in {side} ({len(items)} layer(s)"
    title += f", {len(unrec)} unrecognised key(s))" if unrec else ")"
    lines: list[Text] = []
    for item in items:
        keys = ", ".join(safe(k) for k in item.keys[:MAX_KEYS_LISTED])
        more = f" (+{len(item.keys) - MAX_KEYS_LISTED} more)" \
            if len(item.keys) > MAX_KEYS_LISTED else ""
        what = f"{short_kind(item.kind)}, {item.mode.replace('_', ' ')}"
        lines.append(Text.assemble(text(item.name, "cyan"), f" ({what}): ", (keys + more, "dim")))
    for u in unrec:
        lines.append(Text.assemble(text(u.key, "yellow"), " (unrecognised: ", text(u.reason),
                                   ")"))
    return [Text(title, style="bold"), tb.detail_lines(lines)]


# --- number formats -------------------------------------------------------------------


def _num(x: float) -> str:
    return "NaN" if math.isnan(x) else num(x, 3)


def db(x: float) -> str:
    if math.isnan(x):
        return "NaN dB"
    if math.isinf(x):
        return "identical" if x > 0 else "-inf dB"
    return f"{x:.1f} dB"


def lsb(x: float) -> str:
    return "NaN LSB" if math.isnan(x) else f"{x:.2f} LSB"


def pct(x: float) -> str:
    if math.isnan(x):
        return "NaN %"
    return f"{100 * x:.1f} %" if x == 0 or x >= 0.001 else f"{100 * x:.2g} %"


def cosine(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    return f"{x:.6f}" if x < 1 else "1"


# --- JSON -----------------------------------------------------------------------------


def diff_json(report: DiffReport) -> dict[str, Any]:
    return {
        "schema": DIFF_SCHEMA,
        "a": _file_json(report.a),
        "b": _file_json(report.b),
        "options": {"sort": report.sort, "layer": report.layer_glob, "fold_bn": report.fold_bn},
        "summary": _summary_json(report.summary),
        "interpretation": list(report.interpretation),
        "layers": [_layer_json(row) for row in report.layers],
        "only_a": [_only_json(o) for o in report.only_a],
        "only_b": [_only_json(o) for o in report.only_b],
    }


def _file_json(c: Checkpoint) -> dict[str, Any]:
    return {"file": c.path, "format": c.format, "stage": c.stage.value, "file_size": c.file_size,
            "layers": len(c.layers),
            "unrecognised": [{"key": u.key, "description": u.description, "reason": u.reason}
                             for u in c.unrecognised]}


def _summary_json(s: DiffSummary) -> dict[str, Any]:
    return {
        "comparison": s.comparison, "layers_paired": s.layers_paired,
        "layers_listed": s.layers_listed, "layers_quantized": s.layers_quantized,
        "weights_compared": s.weights_compared, "weight_sqnr_db": s.weight_sqnr_db,
        "worst_layer": s.worst_layer, "flagged_layers": s.flagged_layers,
        "bit_exact": s.bit_exact, "folded": s.folded, "shape_mismatches": s.shape_mismatches,
        "file_size_a": s.file_size_a, "file_size_b": s.file_size_b,
        "unmatched_keys_a": list(s.unmatched_keys_a),
        "unmatched_keys_b": list(s.unmatched_keys_b),
    }


def _layer_json(row: LayerDiff) -> dict[str, Any]:
    return {
        "name": row.name, "name_b": row.name_b, "paired_by": row.how,
        "kind_a": row.kind_a, "kind_b": row.kind_b, "mode_a": row.mode_a, "mode_b": row.mode_b,
        "comparison": row.comparison.value,
        "shape_a": list(row.shape_a) if row.shape_a is not None else None,
        "shape_b": list(row.shape_b) if row.shape_b is not None else None,
        "weight": _weight_json(row.weight),
        "bias": {"in": row.bias_in, "max_abs_error": row.bias_max_abs_error},
        "quant_change": vars(row.quant_change) if row.quant_change is not None else None,
        "output": _output_json(row.output),
        "fold": _fold_json(row.fold),
        "qat": _qat_json(row.qat),
        "only_a": list(row.only_a), "only_b": list(row.only_b),
        "extras_max_abs_error": dict(row.extras_max_abs_error),
        "problem": row.problem,
        "flags": list(row.flags),
    }


def _weight_json(w: WeightError | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "reference": w.reference, "dtype": w.dtype, "bits": w.bits, "sqnr_db": w.sqnr_db,
        "max_abs_error": w.max_abs_error, "mean_abs_error": w.mean_abs_error,
        "max_error_lsb": w.max_error_lsb, "mean_error_lsb": w.mean_error_lsb,
        "clipped_fraction": w.clipped_fraction, "cosine_similarity": w.cosine_similarity,
        "granularity": w.granularity, "channel_sqnr_db": w.channel_sqnr_db,
    }


def _output_json(o: ActChange | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"scale_a": o.scale_a, "zero_point_a": o.zero_point_a, "scale_b": o.scale_b,
            "zero_point_b": o.zero_point_b, "equal": o.equal}


def _fold_json(f: FoldReport | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"batchnorm": f.batchnorm, "side": f.side, "eps": f.eps, "eps_source": f.eps_source,
            "eps_matched": f.eps_matched, "eps_message": f.eps_message,
            "unfolded_sqnr_db": f.unfolded_sqnr_db}


def _qat_json(q: QatCheck | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {
        "bit_exact": q.bit_exact, "weight_checked": q.weight_checked,
        "weight_qparams_equal": q.weight_qparams_equal, "int_mismatches": q.int_mismatches,
        "int_mismatches_own_qparams": q.int_mismatches_own_qparams, "int_total": q.int_total,
        "scale_ratio_min": q.scale_ratio_min, "scale_ratio_max": q.scale_ratio_max,
        "output_qparams_equal": q.output_qparams_equal, "causes": list(q.causes),
    }


def _only_json(o: SideOnly) -> dict[str, Any]:
    return {"name": o.name, "kind": o.kind, "mode": o.mode, "keys": list(o.keys)}
