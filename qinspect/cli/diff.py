"""`qinspect diff A B`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qinspect.cli._console import print_json, progress_bar, stdout_console


class Sort(str, Enum):
    sqnr = "sqnr"
    error = "error"
    name = "name"


def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint, e.g. the float model.")],
    b: Annotated[Path, typer.Argument(
        metavar="B", help="Second checkpoint, e.g. its quantized version.")],
    layer: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional
        "--layer", help="Only layers whose name (in A or B) matches this glob, e.g. 'fc*'.")
    ] = None,
    sort: Annotated[Sort, typer.Option(
        "--sort", help="Order of the table: worst SQNR first, largest error first, or by name.")
    ] = Sort.sqnr,
    no_fold: Annotated[bool, typer.Option(
        "--no-fold", help="Do not fold BatchNorm into the preceding conv/Linear.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON document (schema qinspect.diff/1) instead of tables.")
    ] = False,
    html: Annotated[Optional[Path], typer.Option(  # noqa: UP045 - typer needs Optional
        "--html", metavar="FILE", help="Also write a self-contained HTML page with charts "
        "(atomically; it opens offline, loads nothing).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress bar (there is none when stderr is not a terminal).")
    ] = False,
) -> None:
    """What quantization cost, layer by layer: weight SQNR, error in LSB, clipping, changes."""
    from qinspect import diff as run
    from qinspect.render.diff import diff_json, render_diff
    from qinspect.render.jsonout import dumps

    with progress_bar("diff", quiet) as progress:
        report = run(a, b, layer_glob=layer, sort=sort.value, fold_bn=not no_fold,
                     progress=progress)
    if html is not None:
        from qinspect.render.html_diff import write_diff_html
        write_diff_html(html, diff_json(report), inputs=[a, b])
    if as_json:
        print_json(dumps(diff_json(report)))
        return
    stdout_console().print(render_diff(report))
