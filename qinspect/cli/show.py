"""`qinspect show CKPT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qinspect.cli._console import print_json, progress_bar, stdout_console


def show(
    path: Annotated[Path, typer.Argument(
        metavar="CKPT", help="Checkpoint file (.pt/.pth/.pt2) to explain.")],
    layer: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional
        "--layer", help="Only layers whose name matches this glob, e.g. 'fc*'.")] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Add plain-English sentences for every parameter.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON document (schema qinspect.show/1) instead of tables.")
    ] = False,
    html: Annotated[Optional[Path], typer.Option(  # noqa: UP045 - typer needs Optional
        "--html", metavar="FILE", help="Also write a self-contained HTML page with charts "
        "(atomically; it opens offline, loads nothing).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress bar (there is none when stderr is not a terminal).")
    ] = False,
) -> None:
    """Explain every quantization parameter of a checkpoint: weight, input, output, bias."""
    from qinspect import load, summarise
    from qinspect.render.jsonout import dumps
    from qinspect.render.show import render_show, show_json

    with progress_bar("show", quiet):
        summary = summarise(load(path), layer)
    if html is not None:
        from qinspect.render.html_show import write_show_html
        write_show_html(html, summary, inputs=[path])
    if as_json:
        print_json(dumps(show_json(summary, explain)))
        return
    stdout_console().print(render_show(summary, explain))
