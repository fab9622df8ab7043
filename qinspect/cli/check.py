"""`qinspect check CKPT`: run the rules, exit 0 (passed), 1 (a rule failed), 2 (bad input)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qinspect.cli._console import print_json, progress_bar, stdout_console

OptPath = Optional[Path]  # noqa: UP045 - typer needs Optional


class Format(str, Enum):
    human = "human"
    json = "json"
    junit = "junit"
    github = "github"


def check(
    paths: Annotated[list[Path], typer.Argument(
        metavar="CKPT...", help="Quantized checkpoint(s) to gate (several: human/github "
        "format only, as a pre-commit hook passes them).")],
    reference: Annotated[OptPath, typer.Option(
        help="Float checkpoint: enables the weight-SQNR rules (QI2xx).")] = None,
    input: Annotated[OptPath, typer.Option(
        help="Sample input (.npy): enables the output SQNR/clipping rules (QI3xx).")] = None,
    baseline: Annotated[OptPath, typer.Option(
        help="JSON report of an earlier run: fail on regressions (QI4xx).")] = None,
    config: Annotated[OptPath, typer.Option(
        help="Config file (default: ./qinspect.toml, else [tool.qinspect.check] in "
             "./pyproject.toml).")] = None,
    settings: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--set", metavar="KEY=VALUE", help="Override one config key, e.g. --set "
        "min_range_used=0.5 (repeatable).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Report format.")] = Format.human,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Same as --format json (schema qinspect.check/1), like every command.")
    ] = False,
    output: Annotated[OptPath, typer.Option(
        help="Write the report here (atomically); the human summary still goes to stdout.")
    ] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="No progress bar (there is none when stderr is not a terminal).")
    ] = False,
) -> None:
    """Gate a quantized checkpoint on its calibrated values (exit 0 pass, 1 fail, 2 error)."""
    from qinspect.analyse.check import check as run
    from qinspect.errors import InputError
    from qinspect.render.atomic import write_atomic
    from qinspect.render.check import render_check, render_text

    if as_json:
        if fmt not in (Format.human, Format.json):
            raise InputError(f"--json and --format {fmt.value} ask for two formats; "
                             "pass one of them")
        fmt = Format.json
    multi_ok = (reference, input, baseline, output) == (None,) * 4 and fmt.value in (
        "human", "github")
    if len(paths) > 1 and not multi_ok:
        raise InputError("several checkpoints work with --format human or github only; "
                         "run once per file for --reference/--input/--baseline/--output/json")
    with progress_bar("check", quiet):
        results = [run(p, reference=reference, input=input, baseline=baseline,
                       config=config if config is not None else "auto", settings=settings)
                   for p in paths]
    for result in results:
        if output is not None:
            inputs = [p for p in (*paths, reference, input) if p is not None]
            write_atomic(output, render_text(result, fmt.value), inputs=inputs)
        if output is not None or fmt is Format.human:
            stdout_console().print(render_check(result))
        else:
            print_json(render_text(result, fmt.value))
    raise typer.Exit(max(r.exit_code for r in results))
