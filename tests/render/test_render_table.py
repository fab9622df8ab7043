"""render/table.py: lines break only between chunks, and tables fit the console."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from qinspect.render.table import Column, FitTable, atom, name, shrink, words, wrap

chunk_text = st.text(alphabet="ab1.-_ ", min_size=1, max_size=12)


@given(st.lists(chunk_text, min_size=1, max_size=8), st.integers(1, 40))
def test_wrap_never_splits_a_chunk(chunks, width):
    line = [(c, "") for c in chunks]
    pieces = wrap(line, width)
    texts = [t for piece in pieces for t, _ in piece]
    assert [t.lstrip() for t in texts] == [c.lstrip() for c in chunks]
    for piece in pieces:  # over the width only when one chunk alone is wider
        assert sum(len(t) for t, _ in piece) <= width or len(piece) == 1


@given(st.lists(st.integers(1, 30), min_size=1, max_size=6), st.integers(10, 120))
def test_shrink_respects_least_and_room(natural, room):
    least = [max(1, n // 2) for n in natural]
    widths = shrink(natural, least, room)
    assert all(lo <= w <= n for w, lo, n in zip(widths, least, natural, strict=True))
    assert sum(widths) <= room or widths == least


def test_name_breaks_after_dots_not_inside_numbers():
    assert [t for t, _ in name("layers.10.mlp")] == ["layers.", "10.", "mlp"]
    assert [t for t, _ in words("max 0.000693 LSB")] == ["max", " 0.000693", " LSB"]


def test_table_fits_80_columns_and_keeps_numbers_whole():
    table = FitTable([Column("layer"), Column("value", "right", wraps=False),
                      Column("notes")])
    for i in range(3):
        table.add_row([name(f"model.layers.{i}.self_attn.q_proj")],
                      [atom("0.000279..0.000282")], [words("some prose " * 8)])
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(table)
    lines = out.getvalue().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert sum("0.000279..0.000282" in line for line in lines) == 3
