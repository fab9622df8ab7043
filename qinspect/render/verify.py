"""VerifyReport -> rich renderables (human) or a JSON document (schema ``qinspect.verify/2``).

The progress bar on stderr is the CLI's (``qinspect.cli._console.progress_bar``).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.analyse.verify import (
    InputKind,
    KernelAgreement,
    LayerVerify,
    VerifyReport,
    fmt_db,
)
from qinspect.render.text import safe, text

VERIFY_SCHEMA = "qinspect.verify/2"
SQNR_BAD_DB = 20.0
SQNR_WARN_DB = 30.0
CLIP_BAD = 0.01
SOURCE_LABEL = {
    InputKind.USER: "user input",
    InputKind.CHAINED: "chained (assumed)",
    InputKind.SYNTHETIC: "synthetic (isolated)",
    InputKind.MODEL: "model's real input",
}


def render_verify(report: VerifyReport) -> RenderableType:
    parts: list[RenderableType] = [_header(report), _table(report)]
    if report.scope:
        parts.insert(0, Text.assemble(("what was checked  ", "bold"), text(report.scope)))
    worst = report.explanation()
    if worst is not None:
        parts.append(Text.assemble(("\nworst  ", "bold"), text(worst)))
    if report.end_to_end is not None:
        e = report.end_to_end
        parts.append(Text.assemble(
            ("end-to-end  ", "bold"),
            (f"quantized model vs float model: SQNR {fmt_db(e.sqnr_db)}", _sqnr_style(e.sqnr_db)),
            f" over {e.elements} output values ({e.outputs} tensor"
            f"{'s' if e.outputs != 1 else ''}), max abs error {e.max_abs_error:.4g}"))
        if e.top1_agreement is not None and e.mean_kl is not None:
            parts.append(Text(
                f"            next token over {e.positions} positions: top-1 agreement "
                f"{100 * e.top1_agreement:.1f} %, mean KL {e.mean_kl:.3g} nats"))
        if e.library is not None and e.library_max_abs_diff is not None:
            parts.append(Text(
                f"            {e.library}: its logits differ from qinspect's quantized "
                f"model's by at most {e.library_max_abs_diff:.3g} (SQNR "
                f"{fmt_db(e.library_sqnr_db)})"))
    parts.append(_legend(report))
    notes = _notes(report)
    if notes is not None:
        parts.append(notes)
    return Group(*parts)


def _header(r: VerifyReport) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("file", text(r.path))
    grid.add_row("engine", Text.assemble((r.engine, "bold"), f" ({safe(r.engine_reason)})"))
    grid.add_row("input", text(r.input_text))
    if r.model is not None:
        grid.add_row("model", text(f"{r.model} (imported and run), float weights from "
                                   f"{r.reference}"))
    grid.add_row("float domain", text(r.float_domain))
    if r.chain_note is not None:
        grid.add_row("chain", Text.assemble((" -> ".join(safe(n) for n in r.chain), "yellow"),
                                            ": ", text(r.chain_note)))
    return grid


def _table(r: VerifyReport) -> Table:
    t = Table(header_style="bold", expand=False, title_justify="left",
              title=Text("layers, the one that loses most first", style="bold"))
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("layer", "left"), ("kind", "left"), ("input", "left"), ("SQNR", "right"),
        ("error max / mean", "right"), ("outputs clipped", "right"),
        ("inputs clipped", "right"), ("kernel vs reference", "left"))
    for col, just in columns:
        t.add_column(col, justify=just, overflow="fold")
    worst = r.worst
    for row in r.ranked:
        if not row.verified:
            t.add_row(text(row.name, "dim"), text(row.kind, "dim"), Text("-", style="dim"),
                      Text("-", style="dim"), Text("-", style="dim"), Text("-", style="dim"),
                      Text("-", style="dim"),
                      text(f"not verified: {row.reason}", "dim"))
            continue
        dim = "dim" if row.input_kind is InputKind.SYNTHETIC else ""
        name_style = "bold red" if row is worst else dim
        t.add_row(
            Text.assemble(text(row.name, name_style), (" (worst)" if row is worst else "",
                                                       "bold red")),
            text(row.kind, dim),
            text(SOURCE_LABEL.get(row.input_kind, "-") if row.input_kind is not None else "-",
                 dim or _source_style(row)),
            Text(fmt_db(row.sqnr_db), style=_sqnr_style(row.sqnr_db)),
            _error_cell(row),
            _clip_cell(row),
            Text("-" if row.input_clipped is None else _percent(row.input_clipped),
                 style=_clip_style(row.input_clipped)),
            _kernel_cell(row.kernel),
        )
    return t


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


def _error_cell(row: LayerVerify) -> Text:
    if row.max_error_lsb is not None:
        style = "yellow" if row.max_error_lsb > 1.0 else ""
        return Text(f"{row.max_error_lsb:.2f} / {row.mean_error_lsb:.2f} LSB", style=style)
    if row.max_abs_error is not None:
        return Text(f"{row.max_abs_error:.3g} / {row.mean_abs_error:.3g} (float, abs)")
    return Text("-")


def _clip_cell(row: LayerVerify) -> Text:
    c = row.clipped
    if c is None:
        return Text("- (float output)" if row.mode == "dynamic" else "-", style="dim")
    body = _percent(c)
    if c > 0:
        low, high = row.clipped_low or 0.0, row.clipped_high or 0.0
        where = "top" if high and not low else "bottom" if low and not high else "both ends"
        body += f" ({where})"
    return Text(body, style=_clip_style(c))


def _percent(x: float) -> str:
    """A fraction as a percentage; small non-zero values keep their digits."""
    if 0 < x < 0.001:
        return f"{100 * x:.3f} %"
    return f"{100 * x:.1f} %"


def _kernel_cell(k: KernelAgreement | None) -> Text:
    if k is None:
        return Text("-")
    if k.agree and k.max_diff > 0:  # float outputs compared within a rounding bound
        return Text(f"agree to float32 rounding, max {k.max_diff:.3g} ({k.arithmetic})",
                    style="green")
    if k.agree:
        return Text(f"bit-exact ({k.arithmetic})", style="green")
    unit = "LSB" if k.unit == "LSB" else "(abs)"
    return Text(f"{k.mismatches} of {k.elements} differ, max {k.max_diff:.4g} {unit} "
                f"({k.arithmetic})", style="bold red")


def _legend(r: VerifyReport) -> RenderableType:
    lines = [
        "SQNR: kernel output against the float domain (higher is better, ~6 dB per bit); "
        "error in output LSB (0.5 = rounding only); clipped: outputs whose float value lies "
        "more than half a step beyond the output range (calibrated too narrow), inputs "
        "lost to the clamp when quantized; kernel vs reference: torch's op against "
        "qinspect's integer arithmetic on the same input.",
    ]
    if any(row.input_kind is InputKind.SYNTHETIC for row in r.layers):
        lines.append("Dim rows ran on isolated, synthetic input (uniform over the input range):"
                     " they test the arithmetic; their SQNR and clipping are a stress case, "
                     "not evidence from real data.")
    return Group(*(Text(line, style="dim") for line in lines))


def _notes(r: VerifyReport) -> RenderableType | None:
    seen: dict[str, list[str]] = {}
    for row in r.layers:
        for note in row.notes:
            seen.setdefault(note, []).append(row.name)
    general = list(r.notes)
    if not seen and not general:
        return None
    parts: list[RenderableType] = [Text("\nNotes", style="bold")]
    for note in general:
        parts.append(Text.assemble("  ", text(note)))
    for note, names in seen.items():
        parts.append(Text.assemble("  ", text(", ".join(names), "cyan"), ": ", text(note)))
    return Group(*parts)


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
            "engine": k.engine, "arithmetic": k.arithmetic, "op": k.op,
            "elements": k.elements, "mismatches": k.mismatches, "agree": k.agree,
            "agreement": k.agreement, "max_diff": k.max_diff, "unit": k.unit},
        "notes": list(row.notes),
    }
