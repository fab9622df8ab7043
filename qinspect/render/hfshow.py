"""Summary of a Hugging Face checkpoint -> rich renderables or JSON (``qinspect.show/2``)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qinspect.analyse.explain_packed import explain_packed
from qinspect.analyse.packed import PackedHealth
from qinspect.analyse.summary import LayerSummary, Summary
from qinspect.model import Layer, Level, Mode, Note, OpKind, PackedWeight, ScaleOp, SourceKind
from qinspect.render import table as tb
from qinspect.render.text import num, percent, safe, size, text

SHOW_SCHEMA_2 = "qinspect.show/2"
SHORT_DTYPE = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8",
               "U8": "u8", "E8M0 (uint8)": "e8m0", "U8 (double quant)": "u8 (dq)"}


def common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[:prefix.rfind(".") + 1] if "." in prefix else ""


def render_hf_show(summary: Summary, explain: bool) -> RenderableType:
    rows = [r for r in summary.layers if r.layer.packed is not None]
    parts: list[RenderableType | None] = [_header(summary)]
    if rows:
        parts.append(_table(rows))
    parts.append(_float_modules(summary))
    kv = [r.layer for r in summary.layers if r.layer.op is OpKind.ATTENTION_KV]
    if kv:
        parts.append(Text(f"KV cache scales: {len(kv)} attention modules store k/v scales "
                          "(see --explain)"))
    if explain:
        parts.append(_explanations(summary))
    parts.append(_notes(summary))
    parts.append(_unrecognised(summary))
    return Group(*[p for p in parts if p is not None])


def _header(s: Summary) -> Table:
    c = s.checkpoint
    hf = c.hf
    assert hf is not None
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("file", text(c.path))
    grid.add_row("format", text(c.format))
    grid.add_row("producer", text(hf.producer or "unknown (no quantization_config)"))
    if hf.config_source:
        grid.add_row("config", text(f"{hf.config_source}, quant_method "
                                    f"{hf.method}"))
    shards = f"{len(hf.shards)} shard(s)" + (f" from {safe(hf.index)}" if hf.index else "")
    grid.add_row("files", Text(shards))
    params = s.parameters
    grid.add_row("params", Text(f"{params:,} ({params / 1e6:.2f} M): packed codes counted as "
                                "the values they hold"))
    bf16 = params * 2
    ratio = bf16 / c.file_size if c.file_size else float("nan")
    grid.add_row("size", Text(f"{size(c.file_size)} on disk; {size(bf16)} as bfloat16 "
                              f"({ratio:.2f}x smaller)"))
    grid.add_row("layers", Text(f"{s.quantized_layers} quantized, {s.float_layers} float"))
    if c.order:
        grid.add_row("order", Text(f"layers listed in {c.order}"))
    if hf.ignored:
        shown = ", ".join(safe(p) for p in hf.ignored[:6])
        more = f" (+{len(hf.ignored) - 6})" if len(hf.ignored) > 6 else ""
        grid.add_row("ignored", Text(f"{shown}{more}"))
    return grid


HF_COLUMNS = tuple(tb.Column(h) for h in ("layer", "weight", "scale", "input", "codes"))


def _table(rows: list[LayerSummary]) -> RenderableType:
    """One row per quantized layer; names lose the prefix they all share (said below)."""
    prefix = common_prefix([r.layer.name for r in rows])
    t = tb.FitTable(HF_COLUMNS)
    for r in rows:
        lay, pw = r.layer, r.layer.packed
        assert pw is not None
        t.add_row([tb.name(lay.name[len(prefix):])], *(_lines(cell) for cell in (
            _weight(pw), _scale(pw, r.packed), _input(lay), _codes(r.packed))))
    if not prefix:
        return t
    return Group(t, Text(f"layer names start with {safe(prefix)}"))


def _lines(cell: Text) -> list[tb.Line]:
    """A cell written as lines of text: each line breaks between words only."""
    style = str(cell.style)
    return [tb.words(line, style) for line in cell.plain.split("\n")]


def _gran(pw: PackedWeight) -> str:
    d = pw.quant.granularity.describe()
    return (d.replace("per-group of ", "g").replace(" (along the input)", "")
            .replace(" (flattened)", " flat").replace("per-channel", "channel")
            .replace("per-tensor", "tensor").replace("per-block ", "blk "))


def _weight(pw: PackedWeight) -> Text:
    q = pw.quant
    sym = "sym" if q.symmetric else "asym"
    shape = "x".join(map(str, pw.shape))
    extra = " act" if q.act_order else ""
    return Text(f"{q.element.name}\n{_gran(pw)} {sym}{extra}\n[{shape}]")


def _scale(pw: PackedWeight, h: PackedHealth | None) -> Text:
    q = pw.quant
    dtype = SHORT_DTYPE.get(q.scale_dtype, q.scale_dtype.lower())
    two = [t for t in q.tensors if t.op is not None]
    level = " 2-level" if len(two) > 1 and "global" in " ".join(t.meaning for t in two) else ""
    if h is None or h.problems:
        return Text(f"{dtype}{level}\n?", style="yellow")
    bad = h.scales.problems
    rng = (num(h.scales.min, 3) if h.scales.min == h.scales.max
           else f"{num(h.scales.min, 2)}..{num(h.scales.max, 2)}")
    body = f"{dtype} x{level}\n{rng}"
    if bad:
        body += f"\n{bad} bad"
    return Text(body, style="yellow" if bad else "")


def _input(lay: Layer) -> Text:
    src = lay.input_source
    act = lay.input
    if src is None:
        return Text("-", style="dim")
    if src.kind is SourceKind.OWN_SCALE and act is not None:
        kind = act.dtype.replace("float8_e4m3fn", "fp8").replace("float4_e2m1", "fp4")
        op = "/" if act.op is ScaleOp.DIVIDE else "x"
        return Text(f"{kind} static\n{op} {num(act.scale, 3)}")
    if src.kind is SourceKind.DYNAMIC:
        return Text("dynamic\nper token")
    return Text("float\n(w-only)")


def _codes(h: PackedHealth | None) -> Text:
    if h is None:
        return Text("-", style="dim")
    if h.problems:
        return Text("cannot\ndecode", style="red")
    body = f"{percent(h.range_used)} rng\n{percent(h.at_extremes)} edge"
    return Text(body, style="yellow" if h.flags else "green")


def _float_modules(s: Summary) -> RenderableType | None:
    floats = [r.layer for r in s.layers if r.layer.mode is Mode.FLOAT]
    if not floats:
        return None
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    warn = []
    for lay in floats:
        note = lay.notes[0] if lay.notes else None
        reason = note.message if note else "stored in float"
        if note is not None and note.level is Level.WARNING:
            warn.append(lay.name)
        reasons[reason] += 1
        examples.setdefault(reason, lay.name)
    parts: list[RenderableType] = [Text(f"\nLeft in float: {len(floats)} modules",
                                        style="bold")]
    for reason, n in reasons.items():
        style = "yellow" if any(examples[reason] == w for w in warn) else ""
        parts.append(Text.assemble("  ", (f"{n} x ", ""), text(examples[reason], "cyan"),
                                   (" ..." if n > 1 else ""), ": ", text(reason, style)))
    return Group(*parts)


def _explanations(s: Summary) -> RenderableType:
    parts: list[RenderableType] = [Text("\nWhat each tensor means", style="bold")]
    for r in s.layers:
        lay = r.layer
        if lay.packed is not None:
            sentences = explain_packed(lay, r.packed)
        elif lay.op is OpKind.ATTENTION_KV:
            sentences = [f"{k.key}: scale of the attention {'key' if 'k_' in k.key else 'value'}"
                         " cache (multiplies the cached FP8 values)" for k in lay.keys]
        else:
            continue
        parts.append(text(lay.name, "bold cyan"))
        grid = Table.grid(padding=(0, 0))
        grid.add_column(width=4, no_wrap=True)
        grid.add_column(ratio=1)
        for sentence in sentences:
            grid.add_row("  - ", text(sentence))
        parts.append(grid)
    return Group(*parts)


def _notes(s: Summary) -> RenderableType | None:
    lines: list[tuple[str, Note | str]] = [("(file)", n) for n in s.checkpoint.notes]
    lines += [(r.layer.name, n) for r in s.layers for n in r.layer.notes
              if n.level is Level.WARNING]
    lines += [(r.layer.name, f) for r in s.layers if r.packed for f in r.packed.flags]
    if not lines:
        return None
    parts: list[RenderableType] = [Text("\nNotes", style="bold")]
    for name, note in lines:
        msg = note if isinstance(note, str) else note.message
        warn = isinstance(note, str) or note.level is Level.WARNING
        parts.append(Text.assemble("  ", text(name, "cyan"), ": ",
                                   text(msg, "yellow" if warn else "")))
    return Group(*parts)


def _unrecognised(s: Summary) -> RenderableType:
    items = s.checkpoint.unrecognised
    if not items:
        return Text("\nEvery tensor of the checkpoint is attributed to a layer.", style="green")
    parts: list[RenderableType] = [Text(f"\nUnrecognised tensors ({len(items)})",
                                        style="bold yellow")]
    for u in items:
        parts.append(Text.assemble("  ", text(u.key, "yellow"), f" ({safe(u.description)}): ",
                                   text(u.reason)))
    return Group(*parts)


# --- JSON ---------------------------------------------------------------------------------


def hf_show_json(summary: Summary, explain: bool, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` is the show/1 document; show/2 adds ``hf``, per-layer ``packed``, roles."""
    c = summary.checkpoint
    hf = c.hf
    assert hf is not None
    doc = dict(base)
    doc["schema"] = SHOW_SCHEMA_2
    doc["hf"] = {"method": hf.method, "producer": hf.producer,
                 "config_source": hf.config_source, "model_dtype": hf.model_dtype,
                 "shards": list(hf.shards), "index": hf.index, "ignored": list(hf.ignored),
                 "parameters": summary.parameters, "bf16_bytes": summary.parameters * 2,
                 "quantization_config": hf.quantization_config}
    by_name = {r.layer.name: r for r in summary.layers}
    for entry in doc["layers"]:
        row = by_name[entry["name"]]
        entry["packed"] = _packed_json(row, explain)
    return doc


def _packed_json(row: LayerSummary, explain: bool) -> dict[str, Any] | None:
    pw = row.layer.packed
    if pw is None:
        return None
    q = pw.quant
    g = q.granularity
    h = row.packed
    out: dict[str, Any] = {
        "key": pw.key, "shape": list(pw.shape), "nbytes": pw.nbytes, "format": q.format,
        "element": {"name": q.element.name, "kind": q.element.kind.value,
                    "bits": q.element.bits, "min": q.element.qmin, "max": q.element.qmax},
        "granularity": {"type": type(g).__name__, **{k: (list(v) if isinstance(v, tuple)
                                                         else v)
                                                      for k, v in vars(g).items()}},
        "symmetric": q.symmetric, "act_order": q.act_order, "scale_dtype": q.scale_dtype,
        "zero_point_offset": q.zero_point_offset, "formula": q.formula, "packing": q.packing,
        "compute_dtype": q.compute_dtype,
        "tensors": [{"key": t.key, "dtype": t.dtype, "shape": list(t.shape),
                     "meaning": t.meaning, "op": t.op.value if t.op else None}
                    for t in q.tensors],
        "health": None if h is None else {
            "problems": list(h.problems), "flags": list(h.flags),
            "code_min": h.code_min, "code_max": h.code_max, "range_used": h.range_used,
            "at_extremes": h.at_extremes, "expected_at_extremes": h.expected_at_extremes,
            "zero_point_min": h.zero_point_min, "zero_point_max": h.zero_point_max,
            "scales": vars(h.scales)},
    }
    if explain:
        out["explanation"] = explain_packed(row.layer, h)
    return out



