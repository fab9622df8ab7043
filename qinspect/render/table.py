"""Tables that fit the terminal without ever splitting a number.

A cell is a list of lines; a line is a list of *chunks*, the only places it may break.
``number`` lines never break inside a chunk, ``words`` break between words and ``name``
breaks after ``.``, ``_`` or ``/``. Column widths are decided here, from the console's
width: every column gets its natural width when the table fits, otherwise the columns
that can wrap give up space (widest slack first) down to their longest chunk. Rich then
only lays out lines that already fit, so it never folds a number across two lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from qinspect.render.text import safe

Chunk = tuple[str, str]  # (text, style); a leading space is dropped where a line breaks
Line = list[Chunk]

_WORD = re.compile(r"\s*\S+")
_NAME_PART = re.compile(r"\s*[^._/\s]+[._/]*|\s*[._/]+")


def words(value: str, style: str = "") -> Line:
    """Prose (escaped): breaks between words only."""
    return [(w, style) for w in _WORD.findall(safe(value))] or [("", style)]


def name(value: object, style: str = "") -> Line:
    """A name from a file (escaped): breaks after ``.``, ``_`` or ``/``, never inside
    ``layers.10``'s digits."""
    return [(p, style) for p in _NAME_PART.findall(safe(value))] or [("", style)]


def label(value: object, style: str = "") -> Line:
    """A label from a file (escaped): breaks between words and after ``_``, ``.``, ``/``."""
    return [(p, style) for w in _WORD.findall(safe(value)) for p in _NAME_PART.findall(w)] \
        or [("", style)]


def atom(value: str, style: str = "") -> Line:
    """A line (escaped) that never breaks: a number with its unit, a short label."""
    return [(safe(value), style)]


def joined(*lines: Line) -> Line:
    """Lines joined into one (the break points of each kept)."""
    out: Line = []
    for line in lines:
        out.extend(line)
    return out


def detail_lines(lines: Sequence[Text]) -> Table:
    """Lines indented by two spaces whose wrapped part stays indented."""
    grid = Table.grid(padding=(0, 0))
    grid.add_column(width=2, no_wrap=True)
    grid.add_column(ratio=1)
    for line in lines:
        grid.add_row("", line)
    return grid


def said(who: object, message: object, style: str = "") -> Text:
    """``who: message``, both escaped (names and messages come from files)."""
    return Text.assemble(Text(safe(who), style="cyan"), ": ", Text(safe(message), style=style))


@dataclass
class Column:
    header: str
    justify: str = "left"
    wraps: bool = True  # False: every line keeps its natural width


@dataclass
class FitTable:
    """A rich renderable: ``columns`` and ``rows`` of cells (lists of lines)."""

    columns: Sequence[Column]
    rows: list[list[list[Line]]] = field(default_factory=list)
    spaced: bool = True  # a blank line between rows (rows of one line each: False)

    def add_row(self, *cells: list[Line]) -> None:
        self.rows.append(list(cells))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self.widths(console, options.max_width)
        table = _frame(self.columns, widths, self.spaced)
        for row in self.rows:
            table.add_row(*(_render_cell(cell, w) for cell, w in zip(row, widths, strict=True)))
        yield table

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widths = self.widths(console, options.max_width)
        total = sum(widths) + _overhead(console, options, self.columns)
        return Measurement(total, total)

    def widths(self, console: Console, max_width: int) -> list[int]:
        natural = [max([len(c.header)] + [_width(line) for row in self.rows for line in row[i]])
                   for i, c in enumerate(self.columns)]
        least = [natural[i] if not c.wraps else
                 max([len(c.header)] + [_longest_chunk(line) for row in self.rows
                                        for line in row[i]])
                 for i, c in enumerate(self.columns)]
        room = max_width - _overhead(console, console.options, self.columns)
        cache: dict[tuple[int, int], list[int]] = {}

        def lines(col: int, width: int) -> list[int]:
            if (col, width) not in cache:
                cache[col, width] = [sum(len(wrap(line, width)) for line in row[col])
                                     for row in self.rows]
            return cache[col, width]
        return shrink(natural, least, room, lines if self.rows else None)


def shrink(natural: list[int], least: list[int], room: int,
           lines: Callable[[int, int], list[int]] | None = None) -> list[int]:
    """Take width, one character at a time, from the column where it costs the fewest
    extra table lines (ties: the widest), until the total fits ``room``; never below
    ``least``. ``lines(column, width)``: each row's line count in that column."""
    widths = list(natural)
    excess = sum(widths) - room
    while excess > 0:
        can = [k for k in range(len(widths)) if widths[k] > least[k]]
        if not can:
            break
        if lines is None:
            i = max(can, key=lambda k: (widths[k], k))
        else:
            per_col = [lines(k, widths[k]) for k in range(len(widths))]

            def height(k: int, cols: list[list[int]] = per_col) -> int:
                trial = [lines(k, widths[k] - 1) if c == k else cols[c]
                         for c in range(len(cols))]
                return sum(max(row) for row in zip(*trial, strict=True))
            i = min(can, key=lambda k: (height(k), -widths[k], -k))
        widths[i] -= 1
        excess -= 1
    return widths


def _frame(columns: Iterable[Column], widths: Sequence[int] | None = None,
           spaced: bool = True) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_lines=spaced, show_edge=False, header_style="bold",
              expand=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i, c in enumerate(columns):
        t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="fold",  # type: ignore[arg-type]
                     width=widths[i] if widths is not None else 1)
    return t


def _overhead(console: Console, options: ConsoleOptions, columns: Sequence[Column]) -> int:
    """Borders and padding: the width of a table whose columns are 1 wide, less them."""
    probe = _frame(columns)
    return Measurement.get(console, options, probe).maximum - len(columns)


def _width(line: Line) -> int:
    return sum(len(t) for t, _ in line)


def _longest_chunk(line: Line) -> int:
    return max(len(t.lstrip()) for t, _ in line)


def wrap(line: Line, width: int) -> list[Line]:
    """Greedy: chunks on one line while they fit; a break drops the next chunk's leading
    spaces. A chunk wider than ``width`` gets a line of its own (never split)."""
    out: list[Line] = [[]]
    used = 0
    for text, style in line:
        if out[-1] and used + len(text) > width:
            text = text.lstrip()
            out.append([])
            used = 0
        if not out[-1]:
            text = text.lstrip() if len(out) > 1 else text
        out[-1].append((text, style))
        used += len(text)
    return out


def _render_cell(cell: list[Line], width: int) -> Text:
    lines = [Text.assemble(*piece) for line in cell for piece in wrap(line, width)]
    return Text("\n").join(lines)
