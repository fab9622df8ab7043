"""`qinspect verify CKPT --input sample.npy`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qinspect.cli._console import print_json, progress_bar, stdout_console

OptPath = Optional[Path]  # noqa: UP045 - typer needs Optional


class Engine(str, Enum):
    fbgemm = "fbgemm"
    x86 = "x86"
    qnnpack = "qnnpack"


def verify(
    path: Annotated[Path, typer.Argument(metavar="CKPT", help="Quantized checkpoint to run.")],
    input: Annotated[OptPath, typer.Option(
        help="Sample input: .npy, .npz (one array per model input) or a .pt tensor. "
             "Without it every layer runs on synthetic input.")] = None,
    reference: Annotated[OptPath, typer.Option(
        help="Float checkpoint: the float domain uses its weights (BatchNorm folded as diff "
             "does), so the SQNR includes weight error.")] = None,
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="FILE.py:NAME", help="This imports and runs FILE's code (use it only for "
        "code you trust): calls NAME() (a model class or a builder function returning the "
        "model), loads --reference into it and runs --input through the float and the "
        "quantized model, for exact per-layer inputs and an end-to-end SQNR. Also "
        "package.module:NAME. State_dicts only.")] = None,
    layer: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Only report layers whose name matches this glob, e.g. 'fc*'.")] = None,
    engine: Annotated[Optional[Engine], typer.Option(  # noqa: UP045
        help="Quantized engine to run (default: the one the file implies).")] = None,
    seed: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Seed of the synthetic inputs (default 0; refused where none are drawn).")
    ] = None,
    batch: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Use at most N samples (first axis of the input; synthetic batch size).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON document (schema qinspect.verify/2).")] = False,
    html: Annotated[OptPath, typer.Option(
        "--html", metavar="FILE", help="Also write a self-contained HTML page with charts "
        "(atomically; it opens offline, loads nothing).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Run every quantized layer three ways (float, torch's kernel, qinspect's integer
    reference) and report SQNR, error in LSB, clipping and kernel agreement."""
    from qinspect import verify as run
    from qinspect.render.jsonout import dumps
    from qinspect.render.verify import render_verify, verify_json

    with progress_bar("verify", quiet) as progress:
        report = run(path, input=input, reference=reference, model=model,
                     engine=engine.value if engine else None, layer_glob=layer, seed=seed,
                     batch=batch, progress=progress)
    if html is not None:
        from qinspect.render.html_verify import write_verify_html
        write_verify_html(html, verify_json(report), inputs=[path, input, reference])
    if as_json:
        print_json(dumps(verify_json(report)))
        return
    stdout_console().print(render_verify(report))
