"""VerifyReport -> rich renderables (human) or a JSON document (schema ``qinspect.verify/2``).

The progress bar on stderr is the CLI's (``qinspect.cli._console.progress_bar``).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.analyse.verify import (
    InputKind,
    KernelAgreement,
    LayerVerify,
    VerifyReport,
    fmt_db,
)
from qinspect.render.show import DASH, short_kind
from qinspect.render.table import (
    Column,
    FitTable,
    Line,
    atom,
    detail_lines,
    label,
    name,
    said,
    words,
)
from qinspect.render.text import safe, text

VERIFY_SCHEMA = "qinspect.verify/2"
SQNR_BAD_DB = 20.0
SQNR_WARN_DB = 30.0
CLIP_BAD = 0.01


def render_verify(report: VerifyReport) -> RenderableType:
    parts: list[RenderableType] = [_header(report), _table(report)]
    if report.scope:
        parts.insert(0, _labelled([("what was checked", text(report.scope))]))
    summary: list[tuple[str, RenderableType]] = []
    worst = report.explanation()
    if worst is not None:
        summary.append(("worst", text(worst)))
    if report.end_to_end is not None:
        e = report.end_to_end
        summary.append(("end-to-end", Text.assemble(
            (f"quantized model vs float model: SQNR {fmt_db(e.sqnr_db)}", _sqnr_style(e.sqnr_db)),
            f" over {e.elements} output values ({e.outputs} tensor"
            f"{'s' if e.outputs != 1 else ''}), max abs error {e.max_abs_error:.4g}")))
        if e.top1_agreement is not None and e.mean_kl is not None:
            summary.append(("", Text(
                f"next token over {e.positions} positions: top-1 agreement "
                f"{100 * e.top1_agreement:.1f} %, mean KL {e.mean_kl:.3g} nats")))
        if e.library is not None and e.library_max_abs_diff is not None:
            summary.append(("", Text(
                f"{e.library}: its logits differ from qinspect's quantized "
                f"model's by at most {e.library_max_abs_diff:.3g} (SQNR "
                f"{fmt_db(e.library_sqnr_db)})")))
    if summary:
        parts += [Text(""), _labelled(summary)]
    parts += [Text(""), _legend(report)]
    notes = _notes(report)
    if notes is not None:
        parts.append(notes)
    return Group(*parts)


def _labelled(rows: list[tuple[str, RenderableType]]) -> Table:
    """Bold labels with their text wrapped beside them (continuation lines indented)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label_text, value in rows:
        grid.add_row(label_text, value)
    return grid


def _header(r: VerifyReport) -> RenderableType:
    rows: list[tuple[str, RenderableType]] = [
        ("file", text(r.path)),
        ("engine", Text.assemble((r.engine, "bold"), f" ({safe(r.engine_reason)})")),
        ("input", text(r.input_text)),
    ]
    if r.model is not None:
        rows.append(("model", text(f"{r.model} (imported and run), float weights from "
                                   f"{r.reference}")))
    rows.append(("float domain", text(r.float_domain)))
    if r.chain_note is not None:
        rows.append(("chain", Text.assemble((" -> ".join(safe(n) for n in r.chain), "yellow"),
                                            ": ", text(r.chain_note))))
    return _labelled(rows)


VERIFY_COLUMNS = (Column("layer"), Column("input"), Column("SQNR", "right", wraps=False),
                  Column("error", "right", wraps=False), Column("clipped", "right"),
                  Column("kernel"))
ORDER = {"graph": "graph order", "model": "module order"}
# the input column's short label, and what it means (the legend, for the rows shown)
SOURCE = {
    InputKind.USER: ("user", "the --input"),
    InputKind.CHAINED: ("chained", "the previous layer's output (assumed chain)"),
    InputKind.MODEL: ("real", "the layer's real input in the model"),
    InputKind.SYNTHETIC: ("synthetic", "isolated, uniform over the input range"),
}


def _table(r: VerifyReport) -> RenderableType:
    """One row per layer in the file's (or graph's) order; the worst one marked."""
    t = FitTable(VERIFY_COLUMNS)
    worst = r.worst
    for row in r.layers:
        t.add_row(*(_row(row, row is worst) if row.verified else _skipped_row(row)))
    order = ORDER.get(r.mode, "the file's order")
    return Group(Text(f"layers in {order}", style="bold"), t)


def _layer_cell(row: LayerVerify, style: str, worst: bool = False) -> list[Line]:
    """The name, then the short kind (the long one is in ``--json``)."""
    cell = [name(row.name, "bold red" if worst else style),
            label(short_kind(row.kind), style or "dim")]
    if worst:
        cell.append(atom("(worst)", "bold red"))
    return cell


def _skipped_row(row: LayerVerify) -> list[list[Line]]:
    """Why it was not verified is a note below the table (reasons are long)."""
    return [_layer_cell(row, "dim"), *[DASH] * 4, [words("not verified (see Notes)", "dim")]]


def _row(row: LayerVerify, worst: bool) -> list[list[Line]]:
    dim = "dim" if row.input_kind is InputKind.SYNTHETIC else ""
    source = SOURCE[row.input_kind][0] if row.input_kind is not None else "-"
    return [
        _layer_cell(row, dim, worst),
        [atom(source, dim or _source_style(row))],
        [atom(fmt_db(row.sqnr_db), _sqnr_style(row.sqnr_db))],
        _error_cell(row),
        _clip_cell(row),
        _kernel_cell(row.kernel),
    ]


def _source_style(row: LayerVerify) -> str:
    return "yellow" if row.input_kind is InputKind.CHAINED else ""


def _sqnr_style(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "red"
    if x < SQNR_BAD_DB:
        return "bold red"
    if x < SQNR_WARN_DB:
        return "yellow"
    return "green"


def _clip_style(x: float | None) -> str:
    if x is None or x == 0:
        return ""
    return "bold red" if x >= CLIP_BAD else "yellow"


def _error_cell(row: LayerVerify) -> list[Line]:
    """Max and mean error, then their unit: output LSB, or the float output's absolute
    error (dynamic layers, float outputs)."""
    if row.max_error_lsb is not None:
        style = "yellow" if row.max_error_lsb > 1.0 else ""
        return [atom(f"max {row.max_error_lsb:.2f}", style),
                atom(f"mean {row.mean_error_lsb:.2f}"), atom("LSB", "dim")]
    if row.max_abs_error is not None:
        return [atom(f"max {row.max_abs_error:.3g}"), atom(f"mean {row.mean_abs_error:.3g}"),
                atom("abs (float)", "dim")]
    return DASH


def _clip_cell(row: LayerVerify) -> list[Line]:
    """Outputs clipped (and at which end), then inputs clipped."""
    c = row.clipped
    if c is None:
        cell = [atom("out -", "dim")] if row.mode == "dynamic" else []
    else:
        cell = [atom(f"out {_percent(c)}", _clip_style(c))]
        if c > 0:
            low, high = row.clipped_low or 0.0, row.clipped_high or 0.0
            where = "top" if high and not low else "bottom" if low and not high else "both ends"
            cell.append(words(f"({where})", _clip_style(c)))
    if row.input_clipped is not None:
        cell.append(atom(f"in {_percent(row.input_clipped)}", _clip_style(row.input_clipped)))
    return cell or DASH


def _percent(x: float) -> str:
    """A fraction as a percentage; small non-zero values keep their digits."""
    if 0 < x < 0.001:
        return f"{100 * x:.3f} %"
    return f"{100 * x:.1f} %"


def _kernel_cell(k: KernelAgreement | None) -> list[Line]:
    """Agreement first (a word or a count), then how it was measured."""
    if k is None:
        return DASH
    how = words(f"({k.arithmetic})", "dim")
    if k.agree and k.max_diff > 0:  # float outputs compared within a rounding bound
        return [words("agree to float32 rounding", "green"), atom(f"max {k.max_diff:.3g}"), how]
    if k.agree:
        return [atom("bit-exact", "green"), how]
    unit = "LSB" if k.unit == "LSB" else "(abs)"
    return [atom(f"{k.mismatches} of {k.elements}", "bold red"), words("differ", "bold red"),
            atom(f"max {k.max_diff:.4g} {unit}", "bold red"), how]


KERNEL_SOURCE = {
    "": "torch's quantized op",
    "hf": "the producing library's own forward",
    "torchao": "torchao's kernel",
    "pt2": "the program's own quantized_decomposed ops",
}
"""What the kernel column compares, by runner (torch's quantized ops unless named)."""


def _legend(r: VerifyReport) -> RenderableType:
    sources = [f"{short} = {meaning}" for k, (short, meaning) in SOURCE.items()
               if any(row.input_kind is k for row in r.layers)]
    lines = [
        *([f"input: {'; '.join(sources)}."] if sources else []),
        "SQNR: kernel output against the float domain (higher is better, ~6 dB per bit); "
        "error: max and mean, in output LSB (0.5 = rounding only) or, for a float output, "
        "absolute; clipped: out = outputs whose float value lies more than half a step "
        "beyond the output range (calibrated too narrow), in = inputs lost to the clamp "
        f"when quantized; kernel: {KERNEL_SOURCE.get(r.runner, KERNEL_SOURCE[''])} against "
        "qinspect's reference arithmetic on the same input.",
    ]
    pairs = sum(1 for row in r.layers if row.kernel is not None and row.kernel.int16_pairs)
    if pairs:
        lines.append(f"On this CPU torch's kernels add byte-product pairs in int16 with "
                     f"saturation for {pairs} of {len(r.layers)} layers (fbgemm without "
                     "AVX512-VNNI, or oneDNN capped below VNNI by ONEDNN_MAX_CPU_ISA); the "
                     "reference does the same.")
    if any(row.input_kind is InputKind.SYNTHETIC for row in r.layers):
        lines.append("Dim rows ran on isolated, synthetic input: they test the arithmetic; "
                     "their SQNR and clipping are a stress case, not evidence from real data.")
    return Group(*(Text(line, style="dim") for line in lines))


def _notes(r: VerifyReport) -> RenderableType | None:
    seen: dict[str, list[str]] = {}
    for row in r.layers:
        why = () if row.verified else (f"not verified: {row.reason}",)
        for note in (*why, *row.notes):
            seen.setdefault(note, []).append(row.name)
    general = list(r.notes)
    if not seen and not general:
        return None
    lines = [text(note) for note in general]
    lines += [said(", ".join(names), note) for note, names in seen.items()]
    return Group(Text("\nNotes", style="bold"), detail_lines(lines))


# --- JSON -----------------------------------------------------------------------------


def verify_json(r: VerifyReport) -> dict[str, Any]:
    worst = r.worst
    return {
        "schema": VERIFY_SCHEMA,
        "file": r.path,
        "runner": r.runner,
        "scope": r.scope,
        "mode": r.mode,
        "engine": r.engine,
        "engine_reason": r.engine_reason,
        "input": r.input_text,
        "reference": r.reference,
        "model": r.model,
        "seed": r.seed,
        "batch": r.batch,
        "float_domain": r.float_domain,
        "chain": ({"layers": list(r.chain), "assumption": r.chain_note}
                  if r.chain_note is not None else None),
        "end_to_end": (None if r.end_to_end is None else {
            "sqnr_db": r.end_to_end.sqnr_db, "max_abs_error": r.end_to_end.max_abs_error,
            "elements": r.end_to_end.elements, "outputs": r.end_to_end.outputs,
            "top1_agreement": r.end_to_end.top1_agreement, "mean_kl": r.end_to_end.mean_kl,
            "positions": r.end_to_end.positions, "library": r.end_to_end.library,
            "library_sqnr_db": r.end_to_end.library_sqnr_db,
            "library_max_abs_diff": r.end_to_end.library_max_abs_diff}),
        "worst": (None if worst is None else
                  {"layer": worst.name, "explanation": r.explanation()}),
        "kernel_mismatches": r.kernel_mismatches,
        "layers": [_layer_json(row) for row in r.layers],
        "notes": list(r.notes),
    }


def _layer_json(row: LayerVerify) -> dict[str, Any]:
    k = row.kernel
    return {
        "name": row.name,
        "kind": row.kind,
        "mode": row.mode,
        "verified": row.verified,
        "reason": row.reason,
        "input": None if not row.verified else {
            "source": row.input_kind.value if row.input_kind else None,
            "description": row.input_text,
            "shape": list(row.input_shape),
            "scale": row.input_scale,
            "zero_point": row.input_zero_point,
            "clipped_fraction": row.input_clipped,
            "sqnr_db": row.input_sqnr_db,
        },
        "output": None if not row.verified else {
            "scale": row.output_scale, "zero_point": row.output_zero_point,
            "elements": row.elements},
        "float_domain": row.float_domain or None,
        "relu_fused": row.relu,
        "sqnr_db": row.sqnr_db,
        "max_error_lsb": row.max_error_lsb,
        "mean_error_lsb": row.mean_error_lsb,
        "max_abs_error": row.max_abs_error,
        "mean_abs_error": row.mean_abs_error,
        "clipped_fraction": row.clipped,
        "clipped_low_fraction": row.clipped_low,
        "clipped_high_fraction": row.clipped_high,
        "kernel": None if k is None else {
            "engine": k.engine, "arithmetic": k.recipe, "op": k.op,
            "elements": k.elements, "mismatches": k.mismatches, "agree": k.agree,
            "agreement": k.agreement, "max_diff": k.max_diff, "unit": k.unit},
        "notes": list(row.notes),
    }
